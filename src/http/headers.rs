//! The header fields of a parsed head, request or response: an owned copy of the head's bytes and,
//! for each field, where its name and value sit in it, so a parse allocates a fixed handful of
//! times whatever the number of fields. Names keep the case they were sent in; look-ups ignore it.

use std::ops::Range;

/// The fields of one head, in the order they were sent.
#[derive(Debug, Clone)]
pub struct HeaderList {
    head: Vec<u8>,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl HeaderList {
    /// The fields `httparse` found in `buf`, whose head is `buf[..head_len]`.
    pub(super) fn parsed(buf: &[u8], head_len: usize, fields: &[httparse::Header<'_>]) -> HeaderList {
        HeaderList {
            head: buf[..head_len].to_vec(),
            fields: fields.iter().map(|h| (span(buf, h.name.as_bytes()), span(buf, h.value))).collect(),
        }
    }

    /// The head's bytes at `range`, a [`span`] of the parsed buffer (a method, a reason phrase).
    pub(super) fn slice(&self, range: &Range<usize>) -> &[u8] {
        &self.head[range.clone()]
    }

    /// Every field in order, names as sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.fields
            .iter()
            .map(|(n, v)| (std::str::from_utf8(&self.head[n.clone()]).unwrap_or(""), &self.head[v.clone()]))
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        // Names compared as bytes: no UTF-8 check per field on every lookup.
        let name = name.as_bytes();
        let (_, value) = self.fields.iter().find(|(n, _)| self.head[n.clone()].eq_ignore_ascii_case(name))?;
        Some(&self.head[value.clone()])
    }

    /// The length of the head the fields came from.
    pub fn head_len(&self) -> usize {
        self.head.len()
    }
}

/// Where `part`, a slice of `buf`, sits in it.
pub(super) fn span(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}
