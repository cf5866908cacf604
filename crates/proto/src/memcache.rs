//! memcached text and meta protocol framing.
//!
//! [`parse_request`] reads one client request (a command line, plus the data
//! block of a storage command) into token ranges of the caller's buffer:
//! zero-copy, and the token list is a caller-owned [`Request`] reused from
//! request to request, so nothing is allocated once it has grown.
//! [`reply_len`] finds where one backend reply ends, given the
//! [`ReplyKind`] its request expects, so the reply can be passed to the
//! client without decoding; [`values`] walks the `VALUE` blocks of a
//! complete retrieval reply, for merging the replies of a split multi-get;
//! [`quiet_suppresses`] says which meta replies memcached would have left
//! out under the `q` flag, for a proxy that strips `q` before forwarding.
//!
//! "Not enough bytes yet" is `Ok(None)`, never an error. An [`Error`] says
//! what to tell the client and whether the stream can go on
//! ([`Error::fatal`]).
//!
//! A retrieval line (`get`, `gets`, `gat`, `gats`) may be far longer than
//! other lines: memcached reads a multi-get of any length, so its bound is
//! its own, [`Limits::max_retrieval_line`]. A stream whose line arrives in
//! many pieces is parsed with [`parse_request_resumed`], which keeps in a
//! [`Progress`] how much of the line it has searched, so each byte is
//! searched once however many calls the line takes.
//!
//! A request in the binary protocol (first byte 0x80) is the [`binary`]
//! module's to parse; this text parser refuses one with
//! [`Error::Binary`], whose reply is a binary error response.
//!
//! The grammar is memcached's `doc/protocol.txt`; where that text is silent
//! or out of date, memcached's own parser decides (quiet-mode rules, bare
//! `\n` line endings from clients, duplicate meta flags, 20 meta tokens at
//! most). Replies from memcached always end lines in `\r\n`, and a reply
//! that does not is refused.

use std::ops::Range;

pub mod binary;

/// Bounds on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes as sent (base64 text for a meta `b` key).
    pub max_key: usize,
    /// Longest data block, of a request or of a reply.
    pub max_value: usize,
    /// Most bytes before a line's `\n`, request or reply, except a
    /// retrieval request's.
    pub max_line: usize,
    /// Most bytes before the `\n` of a `get`, `gets`, `gat` or `gats`
    /// line (at least `max_line`). The line is held whole until it ends,
    /// so this bounds the memory one request takes.
    pub max_retrieval_line: usize,
    /// Most keys in one retrieval command. Each key costs a token range
    /// (16 bytes) while the request is handled.
    pub max_keys: usize,
}

impl Default for Limits {
    /// memcached's key length and default item size. memcached closes a
    /// connection after 2048 bytes without a newline, except for `get` and
    /// `gets` lines, which are unbounded: 64 KiB for other lines, and 1 GiB
    /// (Redis's query buffer limit, ferrox's default `max_request`) and a
    /// million keys for a retrieval line.
    fn default() -> Self {
        Limits {
            max_key: 250,
            max_value: 1 << 20,
            max_line: 64 << 10,
            max_retrieval_line: 1 << 30,
            max_keys: 1 << 20,
        }
    }
}

/// A command this codec understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `get <key>+`
    Get,
    /// `gets <key>+`: as `get`, with cas uniques.
    Gets,
    /// `gat <exptime> <key>+`: get and touch.
    Gat,
    /// `gats <exptime> <key>+`: get and touch, with cas uniques.
    Gats,
    /// `set <key> <flags> <exptime> <bytes> [noreply]` + data.
    Set,
    /// `add ...`, as `set`: store only if absent.
    Add,
    /// `replace ...`, as `set`: store only if present.
    Replace,
    /// `append ...`, as `set`: add data after the existing value.
    Append,
    /// `prepend ...`, as `set`: add data before the existing value.
    Prepend,
    /// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]` + data.
    Cas,
    /// `delete <key> [0] [noreply]`
    Delete,
    /// `incr <key> <value> [noreply]`
    Incr,
    /// `decr <key> <value> [noreply]`
    Decr,
    /// `touch <key> <exptime> [noreply]`
    Touch,
    /// `version`
    Version,
    /// `quit`: memcached closes the connection without a reply.
    Quit,
    /// `mg <key> <flag>*`
    MetaGet,
    /// `ms <key> <datalen> <flag>*` + data.
    MetaSet,
    /// `md <key> <flag>*`
    MetaDelete,
    /// `ma <key> <flag>*`
    MetaArithmetic,
    /// `mn`: answered `MN`, marks the end of a pipeline of quiet commands.
    MetaNoop,
    /// `stats [group]`: `STAT name value` lines, then `END`.
    Stats,
}

/// Every command, in declaration order.
pub const COMMANDS: [Command; 22] = [
    Command::Get,
    Command::Gets,
    Command::Gat,
    Command::Gats,
    Command::Set,
    Command::Add,
    Command::Replace,
    Command::Append,
    Command::Prepend,
    Command::Cas,
    Command::Delete,
    Command::Incr,
    Command::Decr,
    Command::Touch,
    Command::Version,
    Command::Quit,
    Command::MetaGet,
    Command::MetaSet,
    Command::MetaDelete,
    Command::MetaArithmetic,
    Command::MetaNoop,
    Command::Stats,
];

/// memcached's limit on the tokens of a meta command line
/// (`MFLAG_MAX_OPT_LENGTH`).
const MAX_META_TOKENS: usize = 20;

impl Command {
    /// The command a name on the wire stands for. Names are lower-case and
    /// case-sensitive.
    pub fn from_name(name: &[u8]) -> Option<Command> {
        Some(match name {
            b"get" => Command::Get,
            b"gets" => Command::Gets,
            b"gat" => Command::Gat,
            b"gats" => Command::Gats,
            b"set" => Command::Set,
            b"add" => Command::Add,
            b"replace" => Command::Replace,
            b"append" => Command::Append,
            b"prepend" => Command::Prepend,
            b"cas" => Command::Cas,
            b"delete" => Command::Delete,
            b"incr" => Command::Incr,
            b"decr" => Command::Decr,
            b"touch" => Command::Touch,
            b"version" => Command::Version,
            b"quit" => Command::Quit,
            b"mg" => Command::MetaGet,
            b"ms" => Command::MetaSet,
            b"md" => Command::MetaDelete,
            b"ma" => Command::MetaArithmetic,
            b"mn" => Command::MetaNoop,
            b"stats" => Command::Stats,
            _ => return None,
        })
    }

    /// The command's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Command::Get => "get",
            Command::Gets => "gets",
            Command::Gat => "gat",
            Command::Gats => "gats",
            Command::Set => "set",
            Command::Add => "add",
            Command::Replace => "replace",
            Command::Append => "append",
            Command::Prepend => "prepend",
            Command::Cas => "cas",
            Command::Delete => "delete",
            Command::Incr => "incr",
            Command::Decr => "decr",
            Command::Touch => "touch",
            Command::Version => "version",
            Command::Quit => "quit",
            Command::MetaGet => "mg",
            Command::MetaSet => "ms",
            Command::MetaDelete => "md",
            Command::MetaArithmetic => "ma",
            Command::MetaNoop => "mn",
            Command::Stats => "stats",
        }
    }

    /// `get`, `gets`, `gat`, `gats`: one or more keys, answered by `VALUE`
    /// blocks and `END`.
    pub fn is_retrieval(self) -> bool {
        matches!(
            self,
            Command::Get | Command::Gets | Command::Gat | Command::Gats
        )
    }

    /// The commands followed by a data block: `set`, `add`, `replace`,
    /// `append`, `prepend`, `cas` and `ms`.
    pub fn is_storage(self) -> bool {
        self.length_token().is_some()
    }

    /// The two-letter meta commands.
    pub fn is_meta(self) -> bool {
        matches!(
            self,
            Command::MetaGet
                | Command::MetaSet
                | Command::MetaDelete
                | Command::MetaArithmetic
                | Command::MetaNoop
        )
    }

    /// The shape of the reply memcached sends to this command.
    pub fn reply_kind(self) -> ReplyKind {
        match self {
            Command::Get | Command::Gets | Command::Gat | Command::Gats => ReplyKind::Retrieval,
            Command::MetaGet
            | Command::MetaSet
            | Command::MetaDelete
            | Command::MetaArithmetic
            | Command::MetaNoop => ReplyKind::Meta,
            Command::Quit => ReplyKind::Close,
            // `stats` is answered by the proxy, never forwarded; the rest
            // are answered by one line.
            _ => ReplyKind::Line,
        }
    }

    /// Which token holds the length of the data block.
    fn length_token(self) -> Option<usize> {
        match self {
            Command::Set
            | Command::Add
            | Command::Replace
            | Command::Append
            | Command::Prepend
            | Command::Cas => Some(4),
            Command::MetaSet => Some(2),
            _ => None,
        }
    }

    /// The most tokens a valid command line has (key count bounded by
    /// `limits`), so a hostile line cannot grow the token list further.
    fn max_tokens(self, limits: &Limits) -> usize {
        match self {
            Command::Get | Command::Gets => limits.max_keys.saturating_add(1),
            Command::Gat | Command::Gats => limits.max_keys.saturating_add(2),
            Command::Cas => 7,
            Command::Set | Command::Add | Command::Replace | Command::Append | Command::Prepend => {
                6
            }
            Command::Delete | Command::Incr | Command::Decr | Command::Touch => 4,
            Command::Version | Command::Quit | Command::MetaNoop => 1,
            // `stats cachedump <slab> <limit>` has the most.
            Command::Stats => 4,
            Command::MetaGet | Command::MetaSet | Command::MetaDelete | Command::MetaArithmetic => {
                MAX_META_TOKENS
            }
        }
    }
}

/// What shape the reply to a request has, so [`reply_len`] knows where it
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Zero or more `VALUE` blocks, then `END`; or an error line
    /// (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`), which may also
    /// come after some `VALUE` blocks.
    Retrieval,
    /// One line.
    Line,
    /// One line, plus a data block when the line is `VA <size> ...`.
    Meta,
    /// No reply: memcached closes the connection (`quit`).
    Close,
}

/// One parsed request, as ranges of the input buffer. Reused across calls:
/// [`parse_request`] clears it first, and the `Vec` keeps its capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command. Meaningful once the command name has been recognised.
    pub command: Command,
    /// Every space-separated token of the command line; token 0 is the
    /// command name.
    pub tokens: Vec<Range<usize>>,
    /// Which entries of `tokens` are keys: `1..n` for `get`, `2..n` for
    /// `gat`, `1..2` for single-key commands, empty for `version`, `quit`
    /// and `mn`.
    pub keys: Range<usize>,
    /// Bytes of the command line, its `\r\n` (or bare `\n`) included.
    pub line_len: usize,
    /// The data block of a storage command or `ms`, its trailing `\r\n`
    /// included.
    pub data: Option<Range<usize>>,
    /// Index in `tokens` of a classic `noreply` token. Set even when the
    /// request is refused, because memcached sends no error reply to a
    /// `noreply` request either.
    pub noreply: Option<usize>,
    /// Index in `tokens` of a meta `q` flag (a flag token starting with
    /// `q`). Meta errors are always sent, whatever this says.
    pub quiet: Option<usize>,
    /// Bytes of the whole request, line and data. After a non-fatal
    /// [`Error`], the bytes the refused request takes, to be skipped.
    pub len: usize,
}

impl Default for Request {
    fn default() -> Self {
        Request::new()
    }
}

impl Request {
    /// An empty request, to be filled by [`parse_request`].
    pub const fn new() -> Self {
        Request {
            command: Command::Get,
            tokens: Vec::new(),
            keys: 0..0,
            line_len: 0,
            data: None,
            noreply: None,
            quiet: None,
            len: 0,
        }
    }

    /// Forgets the last request, keeping the token list's capacity.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.keys = 0..0;
        self.line_len = 0;
        self.data = None;
        self.noreply = None;
        self.quiet = None;
        self.len = 0;
    }

    /// The ranges of the input that are keys.
    pub fn key_ranges(&self) -> &[Range<usize>] {
        self.tokens.get(self.keys.clone()).unwrap_or(&[])
    }
}

/// Why a request is refused, or a reply cannot be framed.
/// [`Error::emit_reply`] writes what the client is told; [`Error::fatal`]
/// says whether the stream can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a command this codec knows. memcached answers `ERROR`; the
    /// request line (`Request::len`) is skipped.
    #[error("unknown command")]
    UnknownCommand,
    /// A request memcached refuses with `CLIENT_ERROR <message>`; skipping
    /// `Request::len` bytes (line and any data block) resynchronises.
    #[error("{0}")]
    Client(&'static str),
    /// A client stream that can never be resynchronised (a line too long,
    /// a data block of unknown length or not ended by `\r\n`): answer
    /// `CLIENT_ERROR <message>`, then close.
    #[error("{0}")]
    Framing(&'static str),
    /// A data block longer than `Limits::max_value`: answer
    /// `SERVER_ERROR object too large for cache` as memcached does, then
    /// close, since the block is not buffered only to be skipped.
    #[error("object too large for cache")]
    TooLarge,
    /// A backend reply that is not valid memcached: close the backend
    /// connection and answer the client `SERVER_ERROR <message>`.
    #[error("{0}")]
    Backend(&'static str),
    /// A request in memcached's binary protocol (its whole header is
    /// here), which this codec does not speak: answer with a binary error
    /// response, so that a binary client sees an error rather than waiting
    /// for a reply it can read, then close.
    #[error("the binary protocol is not supported")]
    Binary { opcode: u8, opaque: u32 },
}

/// The text of the binary error response.
const BINARY_REFUSED: &[u8] = b"binary protocol not supported: use the text protocol";

impl Error {
    /// Appends the reply for the client to `out`: memcached's error line,
    /// or for [`Error::Binary`] a binary response with status "unknown
    /// command" that echoes the request's opcode and opaque.
    pub fn emit_reply(&self, out: &mut Vec<u8>) {
        let (code, message): (&[u8], &str) = match *self {
            Error::UnknownCommand => (b"ERROR", ""),
            Error::Client(message) | Error::Framing(message) => (b"CLIENT_ERROR ", message),
            Error::TooLarge => (b"SERVER_ERROR ", "object too large for cache"),
            Error::Backend(message) => (b"SERVER_ERROR ", message),
            Error::Binary { opcode, opaque } => {
                let response = binary::Response::error(
                    opcode,
                    opaque,
                    binary::STATUS_UNKNOWN_COMMAND,
                    BINARY_REFUSED,
                );
                return response.emit(out);
            }
        };
        out.extend_from_slice(code);
        out.extend_from_slice(message.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Whether the stream that produced the error cannot be resynchronised
    /// and must be closed after the reply.
    pub fn fatal(&self) -> bool {
        matches!(
            self,
            Error::Framing(_) | Error::TooLarge | Error::Backend(_) | Error::Binary { .. }
        )
    }
}

const BAD_FORMAT: &str = "bad command line format";
const BAD_CHUNK: &str = "bad data chunk";

/// Splits a command line into its space-separated tokens, as memcached
/// does (only `' '` separates; runs of spaces are one separator).
struct Tokens<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        Tokens { line, at: 0 }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let line = self.line;
        while self.at < line.len() && line[self.at] == b' ' {
            self.at += 1;
        }
        let start = self.at;
        while self.at < line.len() && line[self.at] != b' ' {
            self.at += 1;
        }
        (self.at > start).then_some(start..self.at)
    }
}

/// A decimal number without sign, as memcached reads lengths, flags, cas
/// uniques and deltas. `None` if not all digits or above `u64::MAX`.
fn unsigned(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// A signed 32-bit decimal, as memcached reads expiration times.
fn signed32(text: &[u8]) -> Option<i32> {
    match text.split_first() {
        Some((b'-', digits)) => i32::try_from(-i64::try_from(unsigned(digits)?).ok()?).ok(),
        _ => i32::try_from(unsigned(text)?).ok(),
    }
}

/// How far the incomplete request at the start of a stream's input has
/// been read, kept between calls of [`parse_request_resumed`]: the bytes of
/// its line already searched for the line's end. A stream starts with
/// `Progress::default()`; every call that does not return `Ok(None)`
/// resets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    searched: usize,
}

impl Progress {
    pub const fn new() -> Progress {
        Progress { searched: 0 }
    }

    /// Bytes of the incomplete request line already searched for its end:
    /// the next call searches only what comes after them.
    pub fn searched(&self) -> usize {
        self.searched
    }
}

/// The longest line the request at the start of `input` may have: a
/// retrieval command's, once its name and a space are in, may be
/// `max_retrieval_line` long; any other `max_line`. The name is looked for
/// in the first 128 bytes only (memcached gives up on a long multi-get
/// after 100 leading spaces), so this costs the same on every call.
fn line_limit(input: &[u8], limits: &Limits) -> usize {
    let head = &input[..input.len().min(128)];
    match Tokens::new(head).next() {
        Some(name)
            if name.end < head.len()
                && Command::from_name(&head[name.clone()]).is_some_and(Command::is_retrieval) =>
        {
            limits.max_retrieval_line.max(limits.max_line)
        }
        _ => limits.max_line,
    }
}

/// The request line at the start of `input`: where its text ends (before
/// `\r\n` or a bare `\n`) and the bytes it takes. memcached accepts a bare
/// `\n` from clients. The search starts after what `progress` says was
/// searched before, and records how far it got when there is no end yet.
fn request_line(
    input: &[u8],
    limits: &Limits,
    progress: &mut Progress,
) -> Result<Option<(usize, usize)>, Error> {
    let limit = line_limit(input, limits);
    let window = &input[..input.len().min(limit.saturating_add(1))];
    let from = progress.searched.min(window.len());
    match window[from..].iter().position(|&b| b == b'\n') {
        Some(at) => {
            progress.searched = 0;
            let lf = from + at;
            let end = if lf > 0 && input[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            Ok(Some((end, lf + 1)))
        }
        None if input.len() > limit => {
            progress.searched = 0;
            Err(Error::Framing("line too long"))
        }
        None => {
            progress.searched = window.len();
            Ok(None)
        }
    }
}

/// Parses one request at the start of `input` into `req` (cleared first).
/// Returns the bytes it takes (`req.len`), `Ok(None)` while incomplete, or
/// why it is refused.
///
/// A refused request that can be skipped ([`Error::fatal`] is false) is
/// reported only once all of it is in `input`, and `req.len` then says how
/// many bytes it takes, so the caller replies and skips exactly that.
///
/// Each call searches the request line from its start: a caller that
/// offers a long line again and again as more of it arrives should use
/// [`parse_request_resumed`].
pub fn parse_request(
    input: &[u8],
    limits: &Limits,
    req: &mut Request,
) -> Result<Option<usize>, Error> {
    parse_request_resumed(input, limits, req, &mut Progress::new())
}

/// [`parse_request`] for a stream that offers an incomplete request again,
/// with more bytes after it: `progress` remembers how much of the request
/// line earlier calls searched, and the search goes on from there, so a
/// line costs time in proportion to its length, not to its length times
/// the calls it takes. `input` must start with the bytes it started with
/// when the last call returned `Ok(None)`.
pub fn parse_request_resumed(
    input: &[u8],
    limits: &Limits,
    req: &mut Request,
    progress: &mut Progress,
) -> Result<Option<usize>, Error> {
    req.clear();
    if input.first() == Some(&binary::REQUEST_MAGIC) {
        *progress = Progress::new();
        let Ok(header) = binary::Header::new_checked(input) else {
            // The header is all a binary client sends at once; its opcode
            // and opaque go into the reply.
            return Ok(None);
        };
        req.len = binary::HEADER_LEN;
        return Err(Error::Binary {
            opcode: header.opcode(),
            opaque: header.opaque(),
        });
    }
    let Some((end, line_len)) = request_line(input, limits, progress)? else {
        return Ok(None);
    };
    let line = &input[..end];
    req.line_len = line_len;
    req.len = line_len;
    let mut words = Tokens::new(line);
    let Some(first) = words.next() else {
        return Err(Error::UnknownCommand);
    };
    let Some(command) = Command::from_name(&line[first.clone()]) else {
        return Err(Error::UnknownCommand);
    };
    req.command = command;
    req.tokens.push(first);
    let cap = command.max_tokens(limits);
    let mut overflow = false;
    for word in words {
        if req.tokens.len() == cap {
            overflow = true;
            break;
        }
        req.tokens.push(word);
    }

    // The data block first: until its length is known and it is all here,
    // the request cannot be skipped, whatever else is wrong with it.
    if let Some(at) = command.length_token() {
        let Some(token) = req.tokens.get(at) else {
            return Err(Error::Framing(BAD_FORMAT));
        };
        let text = &line[token.clone()];
        let len = match unsigned(text) {
            Some(n) if n <= limits.max_value as u64 => n as usize,
            Some(_) => return Err(Error::TooLarge),
            None if text.iter().all(u8::is_ascii_digit) => return Err(Error::TooLarge),
            None => return Err(Error::Framing(BAD_FORMAT)),
        };
        let Some(data_end) = line_len.checked_add(len) else {
            return Err(Error::TooLarge);
        };
        if input.len() < data_end.saturating_add(2) {
            return Ok(None);
        }
        if &input[data_end..data_end + 2] != b"\r\n" {
            return Err(Error::Framing(BAD_CHUNK));
        }
        req.data = Some(line_len..data_end + 2);
        req.len = data_end + 2;
    }

    if overflow {
        return Err(Error::Client(if command.is_retrieval() {
            "too many keys"
        } else if command.is_meta() && command != Command::MetaNoop {
            "options flags are too long"
        } else {
            BAD_FORMAT
        }));
    }
    check(line, limits, req)?;
    Ok(Some(req.len))
}

/// Checks a complete request's arguments as memcached would, and fills
/// `keys`, `noreply` and `quiet`.
fn check(line: &[u8], limits: &Limits, req: &mut Request) -> Result<(), Error> {
    let n = req.tokens.len();
    let token = |i: usize| &line[req.tokens[i].clone()];
    match req.command {
        Command::Get | Command::Gets | Command::Gat | Command::Gats => {
            let first = if matches!(req.command, Command::Gat | Command::Gats) {
                2
            } else {
                1
            };
            if n <= first {
                return Err(Error::Client(BAD_FORMAT));
            }
            if first == 2 && signed32(token(1)).is_none() {
                return Err(Error::Client("invalid exptime argument"));
            }
            req.keys = first..n;
        }
        Command::Set
        | Command::Add
        | Command::Replace
        | Command::Append
        | Command::Prepend
        | Command::Cas => {
            // At least the length token is there, or parsing stopped.
            let args = if req.command == Command::Cas { 6 } else { 5 };
            req.noreply = optional_noreply(line, &req.tokens, args)?;
            if n < args {
                return Err(Error::Client(BAD_FORMAT));
            }
            let flags_ok = unsigned(token(2)).is_some_and(|f| f <= u64::from(u32::MAX));
            let cas_ok = req.command != Command::Cas || unsigned(token(5)).is_some();
            if !flags_ok || signed32(token(3)).is_none() || !cas_ok {
                return Err(Error::Client(BAD_FORMAT));
            }
            req.keys = 1..2;
        }
        Command::Delete => {
            // `delete <key> 0 [noreply]` is the old form with a hold time,
            // which must be zero.
            if n > 2 && token(n - 1) == b"noreply" {
                req.noreply = Some(n - 1);
            }
            let args = n - usize::from(req.noreply.is_some());
            if !(2..=3).contains(&args) || (args == 3 && token(2) != b"0") {
                return Err(Error::Client(BAD_FORMAT));
            }
            req.keys = 1..2;
        }
        Command::Incr | Command::Decr | Command::Touch => {
            req.noreply = optional_noreply(line, &req.tokens, 3)?;
            if n < 3 {
                return Err(Error::Client(BAD_FORMAT));
            }
            if req.command == Command::Touch {
                if signed32(token(2)).is_none() {
                    return Err(Error::Client("invalid exptime argument"));
                }
            } else if unsigned(token(2)).is_none() {
                return Err(Error::Client("invalid numeric delta argument"));
            }
            req.keys = 1..2;
        }
        Command::Version | Command::Quit | Command::MetaNoop | Command::Stats => req.keys = 1..1,
        Command::MetaGet | Command::MetaSet | Command::MetaDelete | Command::MetaArithmetic => {
            if n < 2 {
                return Err(Error::Client(BAD_FORMAT));
            }
            let flags = if req.command == Command::MetaSet {
                3
            } else {
                2
            };
            let mut seen = [false; 128];
            for i in flags..n {
                let flag = token(i)[0];
                if flag >= 127 || seen[flag as usize] {
                    return Err(Error::Client("duplicate flag"));
                }
                seen[flag as usize] = true;
                if flag == b'q' {
                    req.quiet = Some(i);
                }
            }
            req.keys = 1..2;
        }
    }
    for i in req.keys.clone() {
        check_key(&line[req.tokens[i].clone()], limits)?;
    }
    Ok(())
}

/// A classic command with `args` tokens before an optional `noreply`:
/// the token after them, if any, must be `noreply` (`max_tokens` allows at
/// most one), and its index is returned.
fn optional_noreply(
    line: &[u8],
    tokens: &[Range<usize>],
    args: usize,
) -> Result<Option<usize>, Error> {
    match tokens.get(args) {
        Some(token) if &line[token.clone()] == b"noreply" => Ok(Some(args)),
        Some(_) => Err(Error::Client(BAD_FORMAT)),
        None => Ok(None),
    }
}

/// A key memcached would accept: not longer than `max_key` and free of
/// control characters (spaces already separate tokens).
fn check_key(key: &[u8], limits: &Limits) -> Result<(), Error> {
    if key.len() > limits.max_key {
        return Err(Error::Client("key too long"));
    }
    if key.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Error::Client("key contains control characters"));
    }
    Ok(())
}

/// The reply line at the start of `input` without its `\r\n`, and the
/// bytes it takes with it.
fn reply_line<'a>(input: &'a [u8], limits: &Limits) -> Result<Option<(&'a [u8], usize)>, Error> {
    let window = &input[..input.len().min(limits.max_line.saturating_add(1))];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf == 0 || input[lf - 1] != b'\r' => {
            Err(Error::Backend("backend reply line not ended by CRLF"))
        }
        Some(1) => Err(Error::Backend("empty backend reply line")),
        Some(lf) => Ok(Some((&input[..lf - 1], lf + 1))),
        None if input.len() > limits.max_line => Err(Error::Backend("backend reply line too long")),
        None => Ok(None),
    }
}

/// Where a data block of `len` bytes starting at `start` ends, its `\r\n`
/// included: `Ok(None)` while incomplete.
fn reply_block(
    input: &[u8],
    start: usize,
    len: &[u8],
    limits: &Limits,
) -> Result<Option<usize>, Error> {
    let len = match unsigned(len) {
        Some(n) if n <= limits.max_value as u64 => n as usize,
        Some(_) => return Err(Error::Backend("backend value too large")),
        None => return Err(Error::Backend("bad backend value length")),
    };
    let Some(end) = start.checked_add(len).filter(|end| *end <= usize::MAX - 2) else {
        return Err(Error::Backend("backend value too large"));
    };
    if input.len() < end + 2 {
        return Ok(None);
    }
    if &input[end..end + 2] != b"\r\n" {
        return Err(Error::Backend("bad backend data chunk"));
    }
    Ok(Some(end + 2))
}

/// Whether a reply line is one of memcached's error lines: `ERROR`,
/// `CLIENT_ERROR <message>` or `SERVER_ERROR <message>`. Such a line can
/// answer any command, and ends a retrieval reply.
pub fn is_error(line: &[u8]) -> bool {
    [&b"ERROR"[..], b"CLIENT_ERROR", b"SERVER_ERROR"]
        .iter()
        .any(|code| code_is(line, code))
}

/// Whether `line` starts with the reply code `code`, followed by a space or
/// the end of the line.
fn code_is(line: &[u8], code: &[u8]) -> bool {
    line.starts_with(code) && matches!(line.get(code.len()), None | Some(b' ' | b'\r' | b'\n'))
}

/// The length of the one complete reply of shape `kind` at the start of
/// `input`, `Ok(None)` while incomplete, or why it is not valid
/// ([`Error::Backend`]).
///
/// Only framing is checked: the line structure, `VALUE` and `VA` lengths
/// and the `\r\n` after each data block. [`ReplyKind::Close`] is always
/// `Ok(Some(0))`.
pub fn reply_len(input: &[u8], kind: ReplyKind, limits: &Limits) -> Result<Option<usize>, Error> {
    match kind {
        ReplyKind::Close => Ok(Some(0)),
        ReplyKind::Line => Ok(reply_line(input, limits)?.map(|(_, used)| used)),
        ReplyKind::Meta => {
            let Some((line, used)) = reply_line(input, limits)? else {
                return Ok(None);
            };
            if !code_is(line, b"VA") {
                return Ok(Some(used));
            }
            let Some(len) = Tokens::new(line).nth(1) else {
                return Err(Error::Backend("bad backend value length"));
            };
            reply_block(input, used, &line[len], limits)
        }
        ReplyKind::Retrieval => {
            let mut at = 0;
            loop {
                let Some((line, used)) = reply_line(&input[at..], limits)? else {
                    return Ok(None);
                };
                if line == b"END" || is_error(line) {
                    return Ok(Some(at + used));
                }
                if !code_is(line, b"VALUE") {
                    return Err(Error::Backend("unexpected line in backend retrieval reply"));
                }
                // VALUE <key> <flags> <bytes> [<cas unique>]
                let mut words = Tokens::new(line);
                let (Some(len), None) = (words.nth(3), words.nth(1)) else {
                    return Err(Error::Backend("bad backend VALUE line"));
                };
                match reply_block(input, at + used, &line[len], limits)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
        }
    }
}

/// Iterates the `VALUE` blocks of one complete retrieval reply (as
/// measured by [`reply_len`]): for each, the range of its key and the range
/// of the whole block, from `VALUE` to the `\r\n` after its data. Stops at
/// `END`, at an error line, or at anything malformed.
pub fn values(reply: &[u8]) -> Values<'_> {
    Values { reply, at: 0 }
}

/// The iterator [`values`] returns.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    reply: &'a [u8],
    at: usize,
}

impl Values<'_> {
    /// Where the blocks not yet yielded start; once the iterator is done,
    /// where the reply's last line (`END` or an error) starts.
    pub fn position(&self) -> usize {
        self.at
    }
}

impl Iterator for Values<'_> {
    type Item = (Range<usize>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.reply.get(self.at..)?;
        let lf = rest.iter().position(|&b| b == b'\n')?;
        let line = rest[..lf].strip_suffix(b"\r")?;
        if !code_is(line, b"VALUE") {
            return None;
        }
        let mut words = Tokens::new(line);
        let key = words.nth(1)?;
        let len = unsigned(&line[words.nth(1)?])?;
        let end = u64::try_from(self.at + lf + 1)
            .ok()?
            .checked_add(len)?
            .checked_add(2)?;
        let end = usize::try_from(end).ok()?;
        if end > self.reply.len() {
            return None;
        }
        let start = self.at;
        self.at = end;
        Some((start + key.start..start + key.end, start..end))
    }
}

impl std::iter::FusedIterator for Values<'_> {}

/// Whether memcached would have left out this reply to `command` had the
/// request carried the meta `q` flag. A proxy that strips `q` before
/// forwarding drops such replies itself. `reply` starts at the reply line.
///
/// From memcached's server and proxy code (`doc/protocol.txt` is partly out
/// of date here): `mg` hides only the miss, `EN`; `ms` and `md` hide only
/// `HD` (`md` still reports `NF`); `ma` hides its success, `HD` or
/// `VA <size>` with the number. Errors and every other code are sent.
pub fn quiet_suppresses(command: Command, reply: &[u8]) -> bool {
    match command {
        Command::MetaGet => code_is(reply, b"EN"),
        Command::MetaSet | Command::MetaDelete => code_is(reply, b"HD"),
        Command::MetaArithmetic => code_is(reply, b"HD") || code_is(reply, b"VA"),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
