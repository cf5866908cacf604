#![allow(dead_code, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Line,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Get,
}
#[derive(Debug, Default)]
pub struct Limits;
pub fn reply_len(_: &[u8], _: ReplyKind, _: &Limits) -> Result<Option<usize>, ()> {
    Ok(None)
}
pub fn quiet_suppresses(_: Command, _: &[u8]) -> bool {
    false
}
