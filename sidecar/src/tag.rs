//! Entity tags: derived from a representation, parsed from and formatted into
//! headers, compared strongly or weakly (RFC 9110 §8.8.3).

/// An entity tag. `opaque` excludes the quotes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntityTag {
    pub weak: bool,
    pub opaque: String,
}
