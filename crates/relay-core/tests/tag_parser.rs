//! The streaming call-tag parser: every grammar rule, and chunking never changes the parse.

use proptest::prelude::*;
use relay_core::{coalesce_text, CallTagParser, MalformedKind, TagConfig, TagEvent};

fn parser() -> CallTagParser {
    CallTagParser::new(TagConfig::default()).unwrap()
}

/// Parses `chunks` as one stream and returns the coalesced events.
fn parse_chunks<'a>(
    config: &TagConfig,
    chunks: impl IntoIterator<Item = &'a str>,
) -> Vec<TagEvent> {
    let mut p = CallTagParser::new(config.clone()).unwrap();
    let mut events = Vec::new();
    for c in chunks {
        p.push_into(c, &mut events);
    }
    events.extend(p.finish());
    assert_tiles(&events, p.position());
    coalesce_text(events)
}

fn parse(s: &str) -> Vec<TagEvent> {
    parse_chunks(&TagConfig::default(), [s])
}

fn assert_tiles(events: &[TagEvent], len: usize) {
    let mut at = 0;
    for e in events {
        assert_eq!(e.start(), at, "events must be contiguous: {events:?}");
        assert!(
            e.end() > e.start() || matches!(e, TagEvent::Text { .. }),
            "empty tag event {e:?}"
        );
        at = e.end();
    }
    assert_eq!(at, len, "events must cover the stream: {events:?}");
}

fn text(start: usize, s: &str) -> TagEvent {
    TagEvent::Text {
        start,
        text: s.into(),
    }
}

fn call(start: usize, end: usize, n: u64) -> TagEvent {
    TagEvent::Call { start, end, n }
}

fn bad(start: usize, end: usize, kind: MalformedKind) -> TagEvent {
    TagEvent::Malformed { start, end, kind }
}

#[test]
fn plain_text_passes_through() {
    assert_eq!(parse("no tags here"), vec![text(0, "no tags here")]);
    assert_eq!(parse(""), vec![]);
}

#[test]
fn a_call_tag_is_found_with_its_position() {
    assert_eq!(
        parse("a<call>5</call>b"),
        vec![text(0, "a"), call(1, 15, 5), text(15, "b")]
    );
}

#[test]
fn whitespace_inside_the_tag_is_allowed() {
    assert_eq!(parse("<call> 12 </call>"), vec![call(0, 17, 12)]);
    assert_eq!(parse("<call>\n\t7  </call>"), vec![call(0, 18, 7)]);
}

#[test]
fn empty_tag_is_malformed() {
    assert_eq!(
        parse("<call></call>"),
        vec![bad(0, 13, MalformedKind::Empty)]
    );
    assert_eq!(
        parse("<call>   </call>"),
        vec![bad(0, 16, MalformedKind::Empty)]
    );
}

#[test]
fn non_numbers_are_malformed() {
    assert_eq!(
        parse("<call>x</call>"),
        vec![bad(0, 14, MalformedKind::NotANumber)]
    );
    assert_eq!(
        parse("<call>-3</call>"),
        vec![bad(0, 15, MalformedKind::NotANumber)]
    );
    assert_eq!(
        parse("<call>+3</call>"),
        vec![bad(0, 15, MalformedKind::NotANumber)]
    );
    assert_eq!(
        parse("<call>1 2</call>"),
        vec![bad(0, 16, MalformedKind::NotANumber)]
    );
    assert_eq!(
        parse("<call>3.5</call>"),
        vec![bad(0, 16, MalformedKind::NotANumber)]
    );
    // Non-ASCII digits are not digits here.
    assert_eq!(
        parse("<call>٣</call>"),
        vec![bad(0, 15, MalformedKind::NotANumber)]
    );
}

#[test]
fn absurd_n_saturates_instead_of_overflowing() {
    assert_eq!(
        parse("<call>99999999999</call>"),
        vec![call(0, 24, 99_999_999_999)]
    );
    let huge = format!("<call>{}</call>", "9".repeat(40));
    assert_eq!(parse(&huge), vec![call(0, huge.len(), u64::MAX)]);
    assert_eq!(parse("<call>0000</call>"), vec![call(0, 17, 0)]);
}

#[test]
fn nested_tag_is_malformed_up_to_the_first_close() {
    assert_eq!(
        parse("<call><call>5</call>"),
        vec![bad(0, 20, MalformedKind::Nested)]
    );
    assert_eq!(
        parse("<call>1<call>5</call></call>!"),
        vec![bad(0, 21, MalformedKind::Nested), text(21, "</call>!")]
    );
}

#[test]
fn unclosed_tag_at_the_end_takes_only_the_open_string() {
    assert_eq!(
        parse("so <call>12"),
        vec![
            text(0, "so "),
            bad(3, 9, MalformedKind::Unclosed),
            text(9, "12")
        ]
    );
    assert_eq!(parse("<call>"), vec![bad(0, 6, MalformedKind::Unclosed)]);
    // The rescanned body may hold another open string, itself unclosed.
    assert_eq!(
        parse("<call>a<call>b"),
        vec![
            bad(0, 6, MalformedKind::Unclosed),
            text(6, "a"),
            bad(7, 13, MalformedKind::Unclosed),
            text(13, "b")
        ]
    );
}

#[test]
fn an_overlong_body_is_unclosed_and_its_text_is_read_again() {
    let prose = "a".repeat(70);
    let s = format!("<call>{prose}<call>3</call>");
    assert_eq!(
        parse(&s),
        vec![
            bad(0, 6, MalformedKind::Unclosed),
            text(6, &prose),
            call(76, 90, 3)
        ]
    );
}

#[test]
fn body_length_limit_is_exact() {
    let config = TagConfig {
        max_body_len: 4,
        ..TagConfig::default()
    };
    assert_eq!(
        parse_chunks(&config, ["<call>1234</call>"]),
        vec![call(0, 17, 1234)]
    );
    assert_eq!(
        parse_chunks(&config, ["<call>12345</call>"]),
        vec![bad(0, 6, MalformedKind::Unclosed), text(6, "12345</call>")]
    );
    // The limit counts whitespace too: " 12 " is four bytes.
    assert_eq!(
        parse_chunks(&config, ["<call> 12 </call>"]),
        vec![call(0, 17, 12)]
    );
}

#[test]
fn a_tag_at_the_very_end_is_reported_before_finish() {
    let mut p = parser();
    assert_eq!(
        p.push("answer<call>7</call>"),
        vec![text(0, "answer"), call(6, 20, 7)]
    );
    assert_eq!(p.decided(), 20);
    assert_eq!(p.finish(), vec![]);
}

#[test]
fn text_that_might_become_a_tag_is_held_back() {
    let mut p = parser();
    assert_eq!(p.push("abc<ca"), vec![text(0, "abc")]);
    assert_eq!((p.decided(), p.position()), (3, 6));
    assert_eq!(p.push("t"), vec![text(3, "<cat")]);
    assert_eq!(p.push("<call>4"), vec![]);
    assert_eq!(p.decided(), 7);
    assert_eq!(p.push("</cal"), vec![]);
    assert_eq!(p.push("l>"), vec![call(7, 21, 4)]);
}

#[test]
fn finish_decides_held_text_and_the_stream_goes_on() {
    let mut p = parser();
    assert_eq!(p.push("x<cal"), vec![text(0, "x")]);
    assert_eq!(p.finish(), vec![text(1, "<cal")]);
    // After an interruption, positions continue and a new tag is found.
    assert_eq!(
        p.push("l><call>2</call>"),
        vec![text(5, "l>"), call(7, 21, 2)]
    );
}

#[test]
fn a_close_without_open_is_text() {
    assert_eq!(parse("5</call> ok"), vec![text(0, "5</call> ok")]);
}

#[test]
fn lookalikes_are_text() {
    assert_eq!(parse("<<call>1</call>"), vec![text(0, "<"), call(1, 15, 1)]);
    assert_eq!(
        parse("<cal<call>1</call>"),
        vec![text(0, "<cal"), call(4, 18, 1)]
    );
    assert_eq!(parse("<Call>1</Call>"), vec![text(0, "<Call>1</Call>")]);
}

#[test]
fn tag_strings_are_configurable() {
    let config = TagConfig {
        open: "[[".into(),
        close: "]]".into(),
        ..TagConfig::default()
    };
    assert_eq!(
        parse_chunks(&config, ["x[[ 4 ]]y<call>5</call>"]),
        vec![text(0, "x"), call(1, 8, 4), text(8, "y<call>5</call>")]
    );
    assert!(CallTagParser::new(TagConfig {
        open: String::new(),
        ..TagConfig::default()
    })
    .is_err());
    assert!(CallTagParser::new(TagConfig {
        close: String::new(),
        ..TagConfig::default()
    })
    .is_err());
}

#[test]
fn a_formatted_command_parses_back() {
    let config = TagConfig::default();
    assert_eq!(config.format(12), "<call>12</call>");
    assert_eq!(parse(&config.format(12)), vec![call(0, 15, 12)]);
}

#[test]
fn multibyte_text_around_tags_keeps_byte_positions() {
    let s = "é<call>2</call>日本";
    assert_eq!(
        parse(s),
        vec![text(0, "é"), call(2, 16, 2), text(16, "日本")]
    );
}

/// Strings that exercise every rule, used by the exhaustive split tests.
const CORPUS: &[&str] = &[
    "The answer <call>12</call> is",
    "<call> 12 </call><call></call>",
    "a<call>x</call>b<call>-3</call>c",
    "<call>99999999999</call>.",
    "<call><call>5</call></call>",
    "<<cal<call>0</call>l>",
    "é<call>2</call>日本<call>7",
    "x<call>1 2</call><call>",
];

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).skip(1).collect()
}

fn split_at_all(s: &str, cuts: &[usize]) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts {
        out.push(s[prev..c].to_string());
        prev = c;
    }
    out.push(s[prev..].to_string());
    out
}

#[test]
fn every_single_and_double_split_matches_the_unsplit_parse() {
    for s in CORPUS {
        let whole = parse(s);
        let cuts = char_boundaries(s);
        for (i, &a) in cuts.iter().enumerate() {
            let chunks = split_at_all(s, &[a]);
            assert_eq!(
                parse_chunks(&TagConfig::default(), chunks.iter().map(String::as_str)),
                whole,
                "{s:?} split at {a}"
            );
            for &b in &cuts[i + 1..] {
                let chunks = split_at_all(s, &[a, b]);
                assert_eq!(
                    parse_chunks(&TagConfig::default(), chunks.iter().map(String::as_str)),
                    whole,
                    "{s:?} split at {a},{b}"
                );
            }
        }
    }
}

#[test]
fn one_char_chunks_match_the_unsplit_parse() {
    for s in CORPUS {
        let chars: Vec<String> = s.chars().map(String::from).collect();
        assert_eq!(
            parse_chunks(&TagConfig::default(), chars.iter().map(String::as_str)),
            parse(s),
            "{s:?}"
        );
    }
}

#[test]
fn every_chunking_of_short_strings_matches() {
    for s in ["a<call>3</call>b", "<call></call>x", "<call><call>1</call>"] {
        let cuts = char_boundaries(s);
        let whole = parse(s);
        for mask in 0u32..(1 << cuts.len()) {
            let chosen: Vec<usize> = cuts
                .iter()
                .enumerate()
                .filter(|(i, _)| mask >> i & 1 == 1)
                .map(|(_, &c)| c)
                .collect();
            let chunks = split_at_all(s, &chosen);
            assert_eq!(
                parse_chunks(&TagConfig::default(), chunks.iter().map(String::as_str)),
                whole,
                "{s:?} cut at {chosen:?}"
            );
        }
    }
}

fn fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "<call>", "</call>", "<", "c", "a", "l", ">", "/", "<ca", "ll>", "</", "1", "0", "9", " ",
        "x", "-", "é", "\n",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_chunkings_never_change_the_parse(
        parts in prop::collection::vec(fragment(), 0..40),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        max_body_len in prop_oneof![Just(64usize), 0usize..6],
    ) {
        let s: String = parts.concat();
        let config = TagConfig { max_body_len, ..TagConfig::default() };
        let whole = parse_chunks(&config, [s.as_str()]);
        let bounds = char_boundaries(&s);
        let mut chosen: Vec<usize> = if bounds.is_empty() { vec![] } else { cuts.iter().map(|i| bounds[i.index(bounds.len())]).collect() };
        chosen.sort();
        chosen.dedup();
        let chunks = split_at_all(&s, &chosen);
        prop_assert_eq!(parse_chunks(&config, chunks.iter().map(String::as_str)), whole.clone());
        // Every call event is exactly a well-formed tag.
        for e in &whole {
            if let TagEvent::Call { start, end, .. } = e {
                let tag = &s[*start..*end];
                prop_assert!(tag.starts_with("<call>") && tag.ends_with("</call>"));
                prop_assert!(tag["<call>".len()..tag.len() - "</call>".len()].trim().bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }
}
