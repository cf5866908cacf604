//! The part of YAML that twemproxy configurations are written in, read
//! line by line so that every diagnostic has its exact line.
//!
//! twemproxy (`nc_conf.c`: `conf_validate_tokens`,
//! `conf_validate_structure`) takes one document mapping pool names to
//! mappings of scalars, where a key may hold one block sequence of
//! scalars; it refuses flow collections, anchors, aliases, tags,
//! directives and document markers, and so does this reader, with the
//! same reasons. What libyaml would also accept and no twemproxy file
//! needs is refused with a line and a reason rather than guessed at:
//! block scalars (`|`, `>`), values continued on a second line, quoted
//! values spanning lines, and tabs in indentation (which YAML forbids).

use super::check::Report;

/// One top-level key: a pool's name and its settings.
#[derive(Debug)]
pub(super) struct Mapping {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub key: String,
    pub line: usize,
    pub value: Value,
}

#[derive(Debug)]
pub(super) enum Value {
    Scalar(String),
    /// `key:` and the `- item` lines after it (none when the key was left
    /// empty), each with its line.
    List(Vec<(String, usize)>),
}

const FLOW: &str = "flow collections ([...] and {...}) are not accepted by twemproxy; \
     quote a value that starts with [ or {, and put each list item on its own \"- \" line";

/// Reads `text`, reporting every line it cannot take. The pools are
/// returned when every line was read: a key given twice is reported but
/// does not count, since its first value stands.
pub(super) fn read(text: &str, report: &mut Report) -> Option<Vec<Mapping>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::default();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let content = line.trim_start_matches(' ');
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let result = if content.starts_with('\t') {
            Err("a tab in the indentation; YAML indents with spaces only".to_owned())
        } else {
            reader.line(line.len() - content.len(), content, n + 1)
        };
        if let Err(reason) = result {
            report.error(n + 1, reason);
            reader.unreadable = true;
        }
    }
    for (line, reason) in reader.duplicates {
        report.error(line, reason);
    }
    (!reader.unreadable).then_some(reader.pools)
}

#[derive(Debug, Default)]
struct Reader {
    pools: Vec<Mapping>,
    /// Indentation of the current pool's keys, once its first key is read.
    key_indent: Option<usize>,
    /// The current pool's last key had nothing after its colon, so list
    /// items may follow.
    open_list: bool,
    /// Indentation of the current list's items, once the first is read.
    item_indent: Option<usize>,
    /// The list items being read belong to a key given twice.
    discard_items: bool,
    /// Keys given twice, as (line, reason).
    duplicates: Vec<(usize, String)>,
    /// A line could not be read.
    unreadable: bool,
}

impl Reader {
    fn line(&mut self, indent: usize, content: &str, at: usize) -> Result<(), String> {
        if indent == 0 {
            if is_marker(content, "---") || is_marker(content, "...") {
                return Err("document markers (--- and ...) are not accepted by twemproxy".into());
            }
            if content.starts_with('%') {
                return Err("directives (%YAML, %TAG) are not accepted by twemproxy".into());
            }
        }
        if let Some(item) = list_item(content) {
            return self.item(indent, item, at);
        }
        if indent == 0 {
            let (key, rest) = split_key(content)?;
            return self.pool(key, scalar(rest)?, at);
        }
        let Some(pool) = self.pools.last_mut() else {
            return Err("an indented line before any pool name".into());
        };
        match self.key_indent {
            None => self.key_indent = Some(indent),
            Some(k) if k == indent => {}
            Some(k) if indent > k && self.open_list => {
                return Err("a nested mapping; only lists of \"- \" items go under a key".into())
            }
            Some(k) if indent > k => {
                return Err(
                    "indented under a key that already has its value; a value fits on one line"
                        .into(),
                )
            }
            Some(_) => return Err("the indentation does not match the keys above".into()),
        }
        let (key, rest) = split_key(content)?;
        let value = scalar(rest)?;
        self.item_indent = None;
        self.open_list = false;
        if let Some(first) = pool.entries.iter().find(|e| e.key == key) {
            let reason = format!(
                "pool {:?}: {key} is set twice (first on line {}); twemproxy refuses duplicates",
                pool.name, first.line
            );
            self.duplicates.push((at, reason));
            self.open_list = value.is_none();
            self.discard_items = true;
            return Ok(());
        }
        self.open_list = value.is_none();
        self.discard_items = false;
        pool.entries.push(Entry {
            key,
            line: at,
            value: value.map_or(Value::List(Vec::new()), Value::Scalar),
        });
        Ok(())
    }

    /// A key at the left margin starts a pool.
    fn pool(&mut self, name: String, value: Option<String>, at: usize) -> Result<(), String> {
        self.key_indent = None;
        self.item_indent = None;
        self.open_list = false;
        self.discard_items = false;
        let first = self.pools.iter().find(|p| p.name == name).map(|p| p.line);
        // Kept even when wrong, so its settings are not reported as strays.
        self.pools.push(Mapping {
            name,
            line: at,
            entries: Vec::new(),
        });
        if let Some(first) = first {
            return Err(format!(
                "pool {:?} is defined twice (first on line {first})",
                self.pools[self.pools.len() - 1].name
            ));
        }
        if value.is_some() {
            return Err(
                "a pool name stands alone on its line; its settings go on the lines below, indented"
                    .into(),
            );
        }
        Ok(())
    }

    fn item(&mut self, indent: usize, text: &str, at: usize) -> Result<(), String> {
        if indent == 0 {
            return Err("the top level maps pool names to their settings; it is not a list".into());
        }
        let (Some(pool), true) = (self.pools.last_mut(), self.open_list) else {
            return Err(
                "a list item must follow a key with nothing after its colon, like servers:".into(),
            );
        };
        if self.key_indent.is_some_and(|k| indent < k) {
            return Err("the indentation does not match the keys above".into());
        }
        match self.item_indent {
            None => self.item_indent = Some(indent),
            Some(i) if i == indent => {}
            Some(_) => return Err("list items must line up with the ones above".into()),
        }
        let Some(value) = scalar(text)? else {
            return Err("an empty list item".into());
        };
        if self.discard_items {
            return Ok(());
        }
        if let Some(Entry {
            value: Value::List(items),
            ..
        }) = pool.entries.last_mut()
        {
            items.push((value, at));
        }
        Ok(())
    }
}

fn is_marker(content: &str, marker: &str) -> bool {
    content
        .strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// The text after `- `, if `content` is a list item.
fn list_item(content: &str) -> Option<&str> {
    let rest = content.strip_prefix('-')?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

/// Why text starting with this character cannot be a plain scalar (or a
/// key) here, if it cannot.
fn bad_start(text: &str) -> Option<String> {
    let blank_after = |c: char| {
        text.strip_prefix(c)
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
    };
    let reason = match text.chars().next()? {
        '[' | '{' | ']' | '}' | ',' => FLOW,
        '&' => "anchors (&name) are not accepted by twemproxy",
        '*' => "aliases (*name) are not accepted by twemproxy",
        '!' => "tags (!name) are not accepted by twemproxy",
        '|' | '>' => "block scalars (| and >) are not supported; write the value on its line",
        '%' | '@' | '`' => "a value cannot start with %, @ or `; put it in quotes",
        '-' if blank_after('-') => {
            "a list starts on the line after its key, one \"- item\" per line"
        }
        '?' if blank_after('?') => "complex keys (?) are not supported",
        ':' if blank_after(':') => "a key is missing before ':'",
        _ => return None,
    };
    Some(reason.to_owned())
}

/// A key and the text after its colon.
fn split_key(content: &str) -> Result<(String, &str), String> {
    let (key, after) = match content.as_bytes()[0] {
        b'"' => double_quoted(&content[1..])?,
        b'\'' => single_quoted(&content[1..])?,
        _ => {
            if let Some(reason) = bad_start(content) {
                return Err(reason);
            }
            let bytes = content.as_bytes();
            let colon = (0..bytes.len())
                .take_while(|&i| {
                    !(bytes[i] == b'#' && i > 0 && matches!(bytes[i - 1], b' ' | b'\t'))
                })
                .find(|&i| {
                    bytes[i] == b':' && matches!(bytes.get(i + 1), None | Some(b' ' | b'\t'))
                });
            let Some(colon) = colon else {
                return Err(if content.contains(':') {
                    "expected \"key: value\" (a space must follow the colon)".into()
                } else {
                    "expected \"key: value\"".into()
                });
            };
            let key = content[..colon].trim_end();
            if key.is_empty() {
                return Err("a key is missing before ':'".into());
            }
            return Ok((key.to_owned(), &content[colon..][1..]));
        }
    };
    match after.trim_start_matches([' ', '\t']).strip_prefix(':') {
        Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => Ok((key, rest)),
        _ => Err("expected ':' after the quoted key".into()),
    }
}

/// The scalar in `text` (after `key:` or `- `), `None` if there is none.
fn scalar(text: &str) -> Result<Option<String>, String> {
    let text = text.trim_start_matches([' ', '\t']);
    let (value, after) = match text.as_bytes().first() {
        None | Some(b'#') => return Ok(None),
        Some(b'"') => double_quoted(&text[1..])?,
        Some(b'\'') => single_quoted(&text[1..])?,
        Some(_) => {
            if let Some(reason) = bad_start(text) {
                return Err(reason);
            }
            return plain(text).map(Some);
        }
    };
    let after = after.trim_start_matches([' ', '\t']);
    if after.is_empty() || after.starts_with('#') {
        Ok(Some(value))
    } else {
        Err("unexpected text after the closing quote".into())
    }
}

/// A plain scalar: the text up to a comment, without trailing blanks.
fn plain(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let end = (1..bytes.len())
        .find(|&i| bytes[i] == b'#' && matches!(bytes[i - 1], b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let value = text[..end].trim_end_matches([' ', '\t']);
    if value.contains(": ") || value.contains(":\t") || value.ends_with(':') {
        return Err("\": \" inside a value (a nested mapping?); put the value in quotes".into());
    }
    Ok(value.to_owned())
}

const UNCLOSED: &str = "the closing quote is missing; a quoted value must end on its line";

/// A double-quoted scalar's value (the text starts after the opening
/// quote) and the text after its closing quote.
fn double_quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    return Err(UNCLOSED.into());
                };
                let hex_len = match e {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    _ => 0,
                };
                if hex_len > 0 {
                    let digits: String = chars.by_ref().take(hex_len).map(|(_, c)| c).collect();
                    let code = u32::from_str_radix(&digits, 16)
                        .ok()
                        .filter(|_| digits.len() == hex_len)
                        .and_then(char::from_u32);
                    let Some(code) = code else {
                        return Err(format!("invalid escape \\{e}{digits}"));
                    };
                    value.push(code);
                    continue;
                }
                value.push(match e {
                    '0' => '\0',
                    'a' => '\x07',
                    'b' => '\x08',
                    't' | '\t' => '\t',
                    'n' => '\n',
                    'v' => '\x0b',
                    'f' => '\x0c',
                    'r' => '\r',
                    'e' => '\x1b',
                    ' ' => ' ',
                    '"' => '"',
                    '/' => '/',
                    '\\' => '\\',
                    'N' => '\u{85}',
                    '_' => '\u{a0}',
                    'L' => '\u{2028}',
                    'P' => '\u{2029}',
                    _ => return Err(format!("unknown escape \\{e}")),
                });
            }
            c => value.push(c),
        }
    }
    Err(UNCLOSED.into())
}

/// A single-quoted scalar (`''` is a quote), as [`double_quoted`].
fn single_quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut rest = text;
    loop {
        let Some(quote) = rest.find('\'') else {
            return Err(UNCLOSED.into());
        };
        value.push_str(&rest[..quote]);
        rest = &rest[quote + 1..];
        match rest.strip_prefix('\'') {
            Some(after) => {
                value.push('\'');
                rest = after;
            }
            None => return Ok((value, rest)),
        }
    }
}
