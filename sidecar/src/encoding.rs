//! Content codings the sidecar applies itself (a route's `compress:`):
//! `Accept-Encoding` parsed and negotiated (RFC 9110 §12.5.3), and the
//! strong tag of each coding derived from the identity tag. Pure.
//!
//! Negotiation, where the RFC leaves room:
//! - **No field**: identity. §12.5.3 allows any coding, but a client that
//!   says nothing may decode nothing (`curl` without `--compressed`).
//! - **Acceptable**: a coding listed with `q` > 0, or covered by `*` with
//!   `q` > 0. `x-gzip` is `gzip` (§8.4.1.3). Names are case-insensitive.
//! - **Choice**: the highest `q` among the route's codings; ties go to the
//!   route's order (the server's preference). Identity wins only when it is
//!   given a higher `q` than every acceptable coding (explicitly, or through
//!   `*`); otherwise a coding is preferred.
//! - **Nothing acceptable** (e.g. `identity;q=0` and no coding we have):
//!   identity anyway. §12.5.3 permits that or 415/406; a full answer the
//!   client may not like beats an error for what it did ask.
//! - **Malformed elements** (`gzip;q=2`, `gzip;q=abc`, `;q=1`) are ignored,
//!   so they can never make a coding acceptable. A coding listed twice takes
//!   its lowest weight (a refusal anywhere wins). A field over
//!   [`MAX_ACCEPT_ENCODING_BYTES`] (all lines) is read as no preference for
//!   any coding: identity.
//!
//! Tags: the identity representation keeps its content-derived tag `T`; the
//! tag of coding `c` is `T.<profile>` (e.g. `T.br5`), where the profile
//! names the coding and its compressor settings. The compressors are
//! deterministic, so every replica derives the same tag for the same bytes.
//! `.` never occurs in a derived `T` (base64url), so the identity tag is
//! recovered unambiguously. A change to what a compressor emits (level,
//! window, a library major that changes output) must change the profile:
//! `proxy/compress.rs` pins each compressor's output on a fixed input in a
//! test, so such a change cannot slip through.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

use crate::policy::Coding;
use crate::precondition::Conditions;
use crate::tag::{EntityTag, TagList};

/// Longest `Accept-Encoding` (all field lines) read; browsers send ~30
/// bytes.
pub const MAX_ACCEPT_ENCODING_BYTES: usize = 4096;

/// A weight in thousandths (`q=0.5` is 500).
pub type Weight = u16;

/// The weights an `Accept-Encoding` field gives to what the sidecar can
/// produce, `None` where the field says nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptEncoding {
    /// `br`, `zstd`, `gzip`, in [`Coding::ALL`] order.
    codings: [Option<Weight>; 3],
    /// `identity`.
    identity: Option<Weight>,
    /// `*`.
    star: Option<Weight>,
}

impl AcceptEncoding {
    /// Parse the request's `Accept-Encoding`: `None` when absent.
    pub fn from_headers(headers: &HeaderMap) -> Option<AcceptEncoding> {
        let mut lines = headers.get_all(ACCEPT_ENCODING).iter().peekable();
        lines.peek()?;
        let mut total = 0usize;
        let mut out = AcceptEncoding::default();
        for line in lines {
            total += line.len() + 1;
            if total > MAX_ACCEPT_ENCODING_BYTES {
                return Some(AcceptEncoding::default());
            }
            out.merge(line.as_bytes());
        }
        Some(out)
    }

    /// Parse one field value.
    pub fn parse(value: &[u8]) -> AcceptEncoding {
        let mut out = AcceptEncoding::default();
        if value.len() <= MAX_ACCEPT_ENCODING_BYTES {
            out.merge(value);
        }
        out
    }

    fn merge(&mut self, value: &[u8]) {
        for element in value.split(|b| *b == b',') {
            let Some((name, weight)) = parse_element(element) else {
                continue;
            };
            let slot = if name.eq_ignore_ascii_case(b"*") {
                &mut self.star
            } else if name.eq_ignore_ascii_case(b"identity") {
                &mut self.identity
            } else if name.eq_ignore_ascii_case(b"x-gzip") {
                &mut self.codings[index(Coding::Gzip)]
            } else {
                match Coding::ALL
                    .iter()
                    .position(|c| name.eq_ignore_ascii_case(c.as_str().as_bytes()))
                {
                    Some(i) => &mut self.codings[i],
                    None => continue,
                }
            };
            *slot = Some(slot.map_or(weight, |w| w.min(weight)));
        }
    }

    /// The weight of `coding`: its own, else `*`'s, else 0 (not acceptable).
    pub fn weight(&self, coding: Coding) -> Weight {
        self.codings[index(coding)].or(self.star).unwrap_or(0)
    }

    /// The weight of identity when the field gives one (its own or `*`'s);
    /// `None`: acceptable, with no stated preference.
    pub fn identity_weight(&self) -> Option<Weight> {
        self.identity.or(self.star)
    }
}

fn index(coding: Coding) -> usize {
    match coding {
        Coding::Br => 0,
        Coding::Zstd => 1,
        Coding::Gzip => 2,
    }
}

/// One `codings [ weight ]` element: the name and its weight (1000 when
/// none). `None` for an empty or malformed element.
fn parse_element(element: &[u8]) -> Option<(&[u8], Weight)> {
    let mut parts = element.split(|b| *b == b';');
    let name = parts.next()?.trim_ascii();
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return None;
    }
    let mut weight = 1000;
    let mut seen_q = false;
    for param in parts {
        let (key, value) = split_once(param.trim_ascii(), b'=')?;
        if !key.trim_ascii().eq_ignore_ascii_case(b"q") || seen_q {
            // Only a weight is defined for Accept-Encoding.
            return None;
        }
        seen_q = true;
        weight = parse_weight(value.trim_ascii())?;
    }
    Some((name, weight))
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|b| *b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths.
pub fn parse_weight(v: &[u8]) -> Option<Weight> {
    let (int, frac) = match split_once(v, b'.') {
        Some((i, f)) => (i, f),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Weight = 0;
    for (i, d) in frac.iter().enumerate() {
        thousandths += Weight::from(d - b'0') * [100, 10, 1][i];
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The coding to answer with, from the route's `offered` codings (in the
/// server's order of preference) and the request's `Accept-Encoding`;
/// `None`: identity. See the module docs for the rules.
pub fn negotiate(accept: Option<&AcceptEncoding>, offered: &[Coding]) -> Option<Coding> {
    let accept = accept?;
    let mut best: Option<(Coding, Weight)> = None;
    for &coding in offered {
        let w = accept.weight(coding);
        if w > 0 && best.is_none_or(|(_, b)| w > b) {
            best = Some((coding, w));
        }
    }
    let (coding, w) = best?;
    match accept.identity_weight() {
        Some(identity) if identity > w => None,
        _ => Some(coding),
    }
}

/// The profile suffix of a coding's tags: the coding and the compressor
/// settings (`proxy/compress.rs`) that make its output.
pub fn profile(coding: Coding) -> &'static str {
    match coding {
        Coding::Br => "br5",
        Coding::Zstd => "zstd3",
        Coding::Gzip => "gzip6",
    }
}

/// The strong tag of `identity`'s representation encoded with `coding`.
pub fn encoded_tag(identity: &EntityTag, coding: Coding) -> EntityTag {
    let suffix = profile(coding);
    let mut opaque = String::with_capacity(identity.opaque().len() + 1 + suffix.len());
    opaque.push_str(identity.opaque());
    opaque.push('.');
    opaque.push_str(suffix);
    EntityTag::assemble(identity.is_weak(), &opaque)
}

/// The identity tag and coding of a tag [`encoded_tag`] made; `None` for
/// any other tag.
pub fn decode_tag(tag: &EntityTag) -> Option<(EntityTag, Coding)> {
    let (base, suffix) = tag.opaque().rsplit_once('.')?;
    let coding = Coding::ALL.into_iter().find(|c| profile(*c) == suffix)?;
    if base.is_empty() || base.contains('.') {
        return None;
    }
    Some((EntityTag::assemble(tag.is_weak(), base), coding))
}

/// A write's conditions with every encoded tag read as its identity tag: a
/// client that got `T.br5` from a compressed GET holds the current
/// representation when `T` is current, so its `If-Match: "T.br5"` must hold
/// (and its `If-None-Match` must fail) exactly as `"T"` would.
pub fn conditions_as_identity(conditions: &Conditions) -> Cow<'_, Conditions> {
    let encoded = |list: &Option<Result<TagList, _>>| matches!(list, Some(Ok(TagList::Tags(tags))) if tags.iter().any(|t| decode_tag(t).is_some()));
    if !encoded(&conditions.if_match) && !encoded(&conditions.if_none_match) {
        return Cow::Borrowed(conditions);
    }
    let map = |list: &mut Option<Result<TagList, crate::tag::TagError>>| {
        if let Some(Ok(TagList::Tags(tags))) = list {
            for tag in tags.iter_mut() {
                if let Some((identity, _)) = decode_tag(tag) {
                    *tag = identity;
                }
            }
        }
    };
    let mut owned = conditions.clone();
    map(&mut owned.if_match);
    map(&mut owned.if_none_match);
    Cow::Owned(owned)
}

#[cfg(test)]
mod tests;
