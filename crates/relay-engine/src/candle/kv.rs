//! Per-sequence KV cache: one growable f32 buffer per layer for keys and one for values,
//! laid out `[position][kv_head][head_dim]` so appending a token writes one contiguous row.
//!
//! Capacity grows geometrically (doubling), so a token costs amortised O(1) copying; truncate
//! only moves the length; fork copies the used part. f32 rather than f16: on this CPU path the
//! attention reads are a few percent of the weight traffic at typical lengths, and f32 avoids a
//! conversion in the inner loop.

/// Smallest capacity a cache allocates, in positions.
const MIN_CAPACITY: usize = 64;

#[derive(Debug)]
pub(crate) struct KvCache {
    len: usize,
    cap: usize,
    /// Floats per position per layer: `kv_heads * head_dim`.
    row: usize,
    layers: Vec<LayerKv>,
}

#[derive(Debug)]
pub(crate) struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn new(n_layers: usize, row: usize) -> Self {
        Self {
            len: 0,
            cap: 0,
            row,
            layers: (0..n_layers)
                .map(|_| LayerKv {
                    k: Vec::new(),
                    v: Vec::new(),
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes room for `needed` positions (doubling), never past `max` unless `needed` is.
    pub fn reserve(&mut self, needed: usize, max: usize) {
        if needed <= self.cap {
            return;
        }
        let new_cap = (self.cap * 2)
            .max(MIN_CAPACITY)
            .min(max.max(needed))
            .max(needed);
        for l in &mut self.layers {
            l.k.resize(new_cap * self.row, 0.0);
            l.v.resize(new_cap * self.row, 0.0);
        }
        self.cap = new_cap;
    }

    /// Writes keys/values for positions `start..start + rows` of one layer. The caller must
    /// have reserved the room; the length moves only in [`KvCache::commit`].
    pub fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let l = &mut self.layers[layer];
        let a = start * self.row;
        l.k[a..a + k.len()].copy_from_slice(k);
        l.v[a..a + v.len()].copy_from_slice(v);
    }

    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }

    /// Makes the positions written by the last forward part of the sequence.
    pub fn commit(&mut self, new_len: usize) {
        debug_assert!(new_len <= self.cap);
        self.len = new_len;
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// An independent copy holding the same positions (only the used part is copied).
    pub fn fork(&self) -> Self {
        let cap = self.len.max(MIN_CAPACITY).min(self.cap.max(self.len));
        let n = self.len * self.row;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut k = Vec::with_capacity(cap * self.row);
                k.extend_from_slice(&l.k[..n]);
                k.resize(cap * self.row, 0.0);
                let mut v = Vec::with_capacity(cap * self.row);
                v.extend_from_slice(&l.v[..n]);
                v.resize(cap * self.row, 0.0);
                LayerKv { k, v }
            })
            .collect();
        Self {
            len: self.len,
            cap,
            row: self.row,
            layers,
        }
    }
}
