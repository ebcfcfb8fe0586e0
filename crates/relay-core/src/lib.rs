//! relay-core: the RelayLLM protocol as pure logic.
//!
//! Owns the streaming call-tag parser (`<call>n</call>` found in the SLM's decoded text,
//! split across any token boundaries), the relay state machine and its limits, the call
//! policies, and the trace/accounting returned with every response. No I/O, no tensors:
//! engines drive it, so every rule can be tested without a model.
