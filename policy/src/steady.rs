//! `steady:` patterns: text a route's pages change on every render (a CSRF
//! token, a CSP nonce) that the tag leaves out, so two renders that differ
//! only there get one tag. Compiled once per policy, bounded in size, and
//! searched in linear time.
//!
//! The engine is the `regex` crate's own (`regex-automata`'s meta regex over
//! `regex-syntax`): finite automata, no backtracking, so a pattern such as
//! `(a*)*b` costs time linear in the body. Two more bounds keep a whole
//! body's search linear, since iterating over matches is not (the `regex`
//! docs: each search may scan to the end of the haystack, so `n` matches
//! can cost `n²`):
//! - every search runs in a window of [`WINDOW`] bytes (look-around still
//!   sees past its ends), so a match longer than half a window may be cut
//!   short, and a search that finds nothing moves on half a window;
//! - at most [`MAX_MATCHES`] matches per body; past that
//!   [`Steady::excluded`] gives up (`None`) and the caller tags the whole
//!   body, as if the route had no `steady:` (still a correct tag).
//!
//! Both are counts, not clocks: every replica cuts the same body the same
//! way, so tags agree.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};

/// Most patterns on one route.
pub const MAX_PATTERNS: usize = 16;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Compiled size limit of one route's patterns (NFA, and each DFA the
/// engine may build).
pub const SIZE_LIMIT: usize = 1 << 20;
/// Compiled size limit of every route's patterns together.
pub const POLICY_SIZE_LIMIT: usize = 16 << 20;
/// Deepest nesting of groups and repetitions.
const NEST_LIMIT: u32 = 64;
/// Bytes one search looks at; half of it is the longest match always found
/// whole.
pub const WINDOW: usize = 8 * 1024;
/// Most matches left out of one body: tokens and nonces come by the dozen.
/// With [`WINDOW`], this bounds the worst body (every byte a match, each
/// found only after scanning its whole window, such as `.*[^A-Z]|[A-Z]`
/// over `AAAA...`) to scanning 8 MiB more than the body.
pub const MAX_MATCHES: usize = 1024;

/// One route's compiled `steady:` patterns. Equal when the pattern lists
/// are.
#[derive(Clone)]
pub struct Steady {
    patterns: Arc<[Arc<str>]>,
    regex: Regex,
}

/// Why a pattern list was refused: the index of the pattern (or `None` for
/// the list as a whole) and one line of reason.
#[derive(Debug, PartialEq, Eq)]
pub struct SteadyError {
    pub index: Option<usize>,
    pub reason: String,
}

impl Steady {
    /// Compile a route's list. Empty lists are `Ok(None)`.
    pub fn compile(patterns: &[String]) -> Result<Option<Steady>, SteadyError> {
        if patterns.is_empty() {
            return Ok(None);
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(SteadyError {
                index: None,
                reason: format!("at most {MAX_PATTERNS} patterns (got {})", patterns.len()),
            });
        }
        let mut hirs = Vec::with_capacity(patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            let at = |reason: String| SteadyError {
                index: Some(i),
                reason,
            };
            if p.len() > MAX_PATTERN_BYTES {
                return Err(at(format!(
                    "at most {MAX_PATTERN_BYTES} bytes (got {})",
                    p.len()
                )));
            }
            let hir = parser()
                .parse(p)
                .map_err(|e| at(format!("invalid regex `{p}`: {}", syntax_reason(&e))))?;
            if hir.properties().minimum_len() == Some(0) {
                return Err(at(format!(
                    "`{p}` can match empty text; a steady pattern must match at least one character"
                )));
            }
            // Alone first, so a pattern too large is named.
            build(std::slice::from_ref(&hir)).map_err(at)?;
            hirs.push(hir);
        }
        let regex = build(&hirs).map_err(|e| SteadyError {
            index: None,
            reason: format!("the patterns together: {e}"),
        })?;
        Ok(Some(Steady {
            patterns: patterns.iter().map(|p| Arc::from(p.as_str())).collect(),
            regex,
        }))
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[Arc<str>] {
        &self.patterns
    }

    /// Heap bytes the compiled patterns hold.
    pub fn memory_usage(&self) -> usize {
        self.regex.memory_usage()
    }

    /// The non-overlapping spans of `body` the patterns match, in order
    /// (leftmost first; at one position the earlier pattern wins), found
    /// window by window (see the module docs). `None` past
    /// [`MAX_MATCHES`]: the caller hashes the whole body instead.
    pub fn excluded(&self, body: &[u8]) -> Option<Vec<Range<usize>>> {
        let mut spans = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let end = body.len().min(at.saturating_add(WINDOW));
            let input = Input::new(body).range(at..end);
            match self.regex.search(&input) {
                Some(m) if !m.is_empty() => {
                    if spans.len() == MAX_MATCHES {
                        return None;
                    }
                    spans.push(m.range());
                    at = m.end();
                }
                // Empty matches cannot happen (refused at compile time);
                // step over one anyway.
                Some(m) => at = m.end() + 1,
                None if end == body.len() => break,
                // Nothing in this window: a match that starts in its first
                // half and is at most half a window long would have been
                // found, so go on from the middle.
                None => at += WINDOW / 2,
            }
        }
        Some(spans)
    }
}

impl PartialEq for Steady {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Steady {}

impl fmt::Debug for Steady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Steady").field(&self.patterns).finish()
    }
}

fn parser() -> regex_syntax::Parser {
    regex_syntax::ParserBuilder::new()
        .nest_limit(NEST_LIMIT)
        // Bodies are bytes, not always UTF-8: `(?-u:\xFF)` may be written.
        .utf8(false)
        .build()
}

/// Build with the size limits; the error is one line of reason.
fn build(hirs: &[regex_syntax::hir::Hir]) -> Result<Regex, String> {
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .match_kind(MatchKind::LeftmostFirst)
                .utf8_empty(false)
                .nfa_size_limit(Some(SIZE_LIMIT))
                .onepass_size_limit(Some(SIZE_LIMIT))
                .dfa_size_limit(Some(SIZE_LIMIT))
                .hybrid_cache_capacity(2 * SIZE_LIMIT),
        )
        .syntax(syntax::Config::new().utf8(false).nest_limit(NEST_LIMIT))
        .build_many_from_hir(hirs)
        .map_err(|e| build_reason(&e))
}

/// The last line of a syntax error (`regex-syntax` draws the pattern and a
/// caret above it): `unclosed group`.
fn syntax_reason(e: &regex_syntax::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    last.map(|l| l.trim().trim_start_matches("error: ").to_owned())
        .unwrap_or(text)
}

fn build_reason(e: &meta::BuildError) -> String {
    match e.size_limit() {
        Some(limit) => format!("compiles to more than {limit} bytes (too large)"),
        None => e.to_string().lines().last().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(patterns: &[&str]) -> Steady {
        let owned: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        Steady::compile(&owned).unwrap().unwrap()
    }

    #[test]
    fn spans_are_leftmost_first_and_non_overlapping() {
        let s = steady(&[r#"name="csrf" value="[^"]*""#, r#"nonce="[A-Za-z0-9+/=]+""#]);
        let body = br#"<input name="csrf" value="abc"><script nonce="Zm9v">x</script>"#;
        let spans = s.excluded(body).unwrap();
        let texts: Vec<&[u8]> = spans.iter().map(|r| &body[r.clone()]).collect();
        assert_eq!(
            texts,
            [&br#"name="csrf" value="abc""#[..], &br#"nonce="Zm9v""#[..]]
        );
    }

    #[test]
    fn look_around_sees_past_a_window() {
        let s = steady(&[r"\btok[0-9]+\b"]);
        let mut body = vec![b'x'; WINDOW / 2 - 2];
        body.extend_from_slice(b" tok1234 ");
        let spans = s.excluded(&body).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(&body[spans[0].clone()], b"tok1234");
        // `tok12` ends where the first window does, but `x` follows: no
        // word boundary there, though the window ends.
        let glued = [vec![b' '; WINDOW - 5], b"tok12x".to_vec()].concat();
        assert_eq!(s.excluded(&glued).unwrap(), Vec::<Range<usize>>::new());
        let spaced = [vec![b' '; WINDOW - 5], b"tok12 x".to_vec()].concat();
        let spans = s.excluded(&spaced).unwrap();
        assert_eq!((spans.len(), &spans[0]), (1, &(WINDOW - 5..WINDOW)));
    }

    #[test]
    fn matches_are_found_across_window_boundaries() {
        let s = steady(&["TOKEN-[0-9]{3}"]);
        for offset in [
            0,
            WINDOW / 2 - 5,
            WINDOW - 5,
            WINDOW + 3,
            3 * WINDOW / 2 - 1,
        ] {
            let mut body = vec![b'.'; offset];
            body.extend_from_slice(b"TOKEN-123");
            body.extend(vec![b'.'; 100]);
            let spans = s.excluded(&body).unwrap();
            assert_eq!(spans.len(), 1, "offset {offset}");
            assert_eq!(spans[0], offset..offset + 9, "offset {offset}");
        }
    }

    #[test]
    fn too_many_matches_give_up() {
        let s = steady(&["a"]);
        assert_eq!(
            s.excluded(&vec![b'a'; MAX_MATCHES]).unwrap().len(),
            MAX_MATCHES
        );
        assert_eq!(s.excluded(&vec![b'a'; MAX_MATCHES + 1]), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_searched() {
        let s = steady(&["tok=[0-9]+", r"(?-u:\xFF)+"]);
        let body = b"\xC3\x28 tok=42 \xFF\xFF!";
        let spans = s.excluded(body).unwrap();
        assert_eq!(spans, [3..9, 10..12]);
    }
}
