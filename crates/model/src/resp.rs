//! RESP2 read straight from the bytes for the one reply on the persister's hot path: `XREADGROUP`'s
//! entries, without redis-rs' reply tree.
//!
//! A drain's profile put most of the persister's CPU in redis-rs' parser: a combinator parser that builds
//! a `Value` per id, field and value (an allocation each), which `redis_stream` then walks again. Here
//! [`reply_len`] finds where one reply ends by skipping bulk strings by their length, and
//! [`read_reply`] walks the complete reply once into [`RawEntry`]s. The connection that sends the
//! command and collects the bytes lives in `service::redis`.

use crate::redis_stream::RawEntry;

/// Where a reply stands in a buffer that starts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The reply is complete and takes this many bytes.
    Complete(usize),
    /// The reply is not complete; the buffer must hold at least this many bytes before it can be.
    Needs(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    /// Redis answered with an error (`-NOGROUP …`, `-ERR …`): its text.
    #[error("{0}")]
    Redis(String),
    /// The bytes are not the RESP2 this reader expects: the connection can no longer be trusted.
    #[error("malformed reply: {0}")]
    Protocol(&'static str),
}

impl ReplyError {
    /// The error's code: the first word of Redis' error reply when it is in capitals (`NOGROUP`,
    /// `BUSYGROUP`, `ERR`), the convention every Redis error follows and redis-rs's `RedisError::code`
    /// reads the same way. What callers match on, never the text after it.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Redis(text) => text
                .split(' ')
                .next()
                .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase())),
            Self::Protocol(_) => None,
        }
    }
}

/// Redis refuses bulk strings longer than this (`proto-max-bulk-len`'s default, 512 MiB).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// More elements than a reply could hold in Redis' memory: a declared count past it is not a reply (and
/// would overflow the count of elements left).
const MAX_ELEMENTS: u64 = 1 << 32;

/// The end of the line that starts at `from` (the index of its `\r`), if the buffer holds it.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let at = from + buf.get(from..)?.iter().position(|&b| b == b'\r')?;
    (at + 1 < buf.len()).then_some(at)
}

/// A length line's value (`*<n>`, `$<n>`): `-1` for nil.
fn length(digits: &[u8]) -> Result<i64, ReplyError> {
    let bad = ReplyError::Protocol("a length that is not a number");
    let (negative, digits) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(bad);
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad);
        }
        n = n * 10 + i64::from(d - b'0');
    }
    match (negative, n) {
        (false, n) => Ok(n),
        (true, 1) => Ok(-1),
        (true, _) => Err(ReplyError::Protocol("a negative length other than -1")),
    }
}

/// How many bytes the first reply in `buf` takes, or how many the buffer needs before that can be told.
pub fn reply_len(buf: &[u8]) -> Result<Scan, ReplyError> {
    ReplyScan::default().scan(buf)
}

/// [`reply_len`] for a reply that arrives in pieces: each [`ReplyScan::scan`] of the growing buffer goes
/// on from the last element it read whole. It walks the reply's headers and jumps over bulk strings, so
/// it costs one step per element however the bytes arrive.
#[derive(Debug, Clone)]
pub struct ReplyScan {
    /// Where the next element starts.
    pos: usize,
    /// Values still to be read: the reply itself, then every element of every array met.
    left: u64,
}

impl Default for ReplyScan {
    fn default() -> Self {
        Self { pos: 0, left: 1 }
    }
}

impl ReplyScan {
    /// `buf` is the buffer of the previous calls with more bytes after them.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, ReplyError> {
        while self.left > 0 {
            let pos = self.pos;
            let Some(end) = line_end(buf, pos) else {
                return Ok(Scan::Needs(buf.len() + 1));
            };
            if buf[end + 1] != b'\n' {
                return Err(ReplyError::Protocol("a line not ended by CRLF"));
            }
            if end == pos {
                return Err(ReplyError::Protocol("an empty line"));
            }
            let (tag, head) = (buf[pos], &buf[pos + 1..end]);
            let mut next = end + 2;
            let mut children = 0;
            match tag {
                b'+' | b'-' | b':' => {}
                b'$' => {
                    let n = length(head)?;
                    if n >= 0 {
                        let n = n as usize;
                        if n > MAX_BULK {
                            return Err(ReplyError::Protocol("a bulk string over 512 MiB"));
                        }
                        next += n + 2;
                        if next > buf.len() {
                            return Ok(Scan::Needs(next));
                        }
                        if &buf[next - 2..next] != b"\r\n" {
                            return Err(ReplyError::Protocol("a bulk string not ended by CRLF"));
                        }
                    }
                }
                b'*' => children = length(head)?.max(0) as u64,
                _ => return Err(ReplyError::Protocol("an unknown type byte")),
            }
            self.pos = next;
            self.left = (self.left - 1)
                .checked_add(children)
                .filter(|&left| left <= MAX_ELEMENTS)
                .ok_or(ReplyError::Protocol("more elements than a reply can hold"))?;
        }
        Ok(Scan::Complete(self.pos))
    }
}

/// A cursor over one complete reply (checked by [`reply_len`]).
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The next header: its type byte and the rest of its line.
    fn header(&mut self) -> Result<(u8, &'a [u8]), ReplyError> {
        let end = line_end(self.buf, self.pos).ok_or(ReplyError::Protocol("a reply cut short"))?;
        if end == self.pos {
            return Err(ReplyError::Protocol("an empty line"));
        }
        let header = (self.buf[self.pos], &self.buf[self.pos + 1..end]);
        self.pos = end + 2;
        Ok(header)
    }

    /// An array's length; `None` for a nil array.
    fn array(&mut self) -> Result<Option<usize>, ReplyError> {
        match self.header()? {
            (b'*', n) => Ok(usize::try_from(length(n)?).ok()),
            _ => Err(ReplyError::Protocol("an array expected")),
        }
    }

    /// A bulk or simple string's bytes; `None` for nil.
    fn string(&mut self) -> Result<Option<&'a [u8]>, ReplyError> {
        match self.header()? {
            (b'+', s) => Ok(Some(s)),
            (b'$', n) => {
                let Ok(n) = usize::try_from(length(n)?) else {
                    return Ok(None);
                };
                let s = self
                    .buf
                    .get(self.pos..self.pos + n)
                    .ok_or(ReplyError::Protocol("a reply cut short"))?;
                self.pos += n + 2;
                Ok(Some(s))
            }
            _ => Err(ReplyError::Protocol("a string expected")),
        }
    }

    fn text(&mut self) -> Result<String, ReplyError> {
        // As `redis_stream` does: Redis only sends ids and field names the writer gave it, and a name
        // that is not UTF-8 is simply one no decoder knows.
        Ok(self
            .string()?
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default())
    }
}

/// The entries of a complete `XREAD`/`XREADGROUP` reply (`[[key, [[id, [field, value, …]], …]], …]`,
/// nil when none) in RESP2, as [`crate::redis_stream::read_reply`] gives them from redis-rs' `Value`.
/// An entry deleted while pending has no fields. An error reply is [`ReplyError::Redis`].
pub fn read_reply(reply: &[u8]) -> Result<Vec<RawEntry>, ReplyError> {
    if let [b'-', ..] = reply {
        let end = line_end(reply, 0).ok_or(ReplyError::Protocol("a reply cut short"))?;
        return Err(ReplyError::Redis(
            String::from_utf8_lossy(&reply[1..end]).into_owned(),
        ));
    }
    let mut at = Cursor { buf: reply, pos: 0 };
    let mut out = Vec::new();
    for _ in 0..at.array()?.unwrap_or(0) {
        if at.array()? != Some(2) {
            return Err(ReplyError::Protocol("a stream not a [key, entries] pair"));
        }
        at.string()?;
        let entries = at.array()?.unwrap_or(0);
        // Counts are the sender's word until the elements are read: reserve within reason.
        out.reserve(entries.min(4096));
        for _ in 0..entries {
            if at.array()? != Some(2) {
                return Err(ReplyError::Protocol("an entry not an [id, fields] pair"));
            }
            let id = at.text()?;
            let flat = at.array()?.unwrap_or(0);
            let mut fields = Vec::with_capacity((flat / 2).min(16));
            for _ in 0..flat / 2 {
                let name = crate::redis_stream::field_name(at.string()?.unwrap_or_default());
                let value = at.string()?.map(<[u8]>::to_vec).unwrap_or_default();
                fields.push((name, value));
            }
            if flat % 2 == 1 {
                at.string()?;
            }
            out.push(RawEntry { id, fields });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
