//! A pool's data validation (`[pools.NAME.validate]`): key, value and
//! expiry rules a request must pass before it is forwarded. Each check
//! returns the broken rule's message; the caller words the error for its
//! protocol, and nothing reaches a server.

use ferrox_config::Validate;

use crate::acl::glob;

/// memcached reads an exptime over 30 days as a Unix time.
const MEMCACHED_RELATIVE_LIMIT: i64 = 60 * 60 * 24 * 30;

/// Keys: each within `max_key_bytes` and matching one of `key_patterns`,
/// at most `max_keys` of them.
pub(super) fn keys<'k>(
    rules: &Validate,
    keys: impl Iterator<Item = &'k [u8]>,
) -> Result<(), String> {
    let mut count = 0;
    for key in keys {
        count += 1;
        if let Some(max) = rules.max_key_bytes {
            if key.len() > max {
                return Err(format!(
                    "validate max_key_bytes: a key of {} bytes, longer than {max}",
                    key.len()
                ));
            }
        }
        if !rules.key_patterns.is_empty()
            && !rules.key_patterns.iter().any(|p| glob(p.as_bytes(), key))
        {
            return Err(format!(
                "validate key_patterns: key '{}' matches none of {}",
                printable(key),
                rules.key_patterns.join(", ")
            ));
        }
    }
    match rules.max_keys {
        Some(max) if count > max => Err(format!("validate max_keys: {count} keys, at most {max}")),
        _ => Ok(()),
    }
}

/// A value a write carries.
pub(super) fn value(rules: &Validate, len: usize) -> Result<(), String> {
    match rules.max_value_bytes {
        Some(max) if len > max => Err(format!(
            "validate max_value_bytes: a value of {len} bytes, longer than {max}"
        )),
        _ => Ok(()),
    }
}

/// The expiry rules for a Redis command (`name` upper case; `arg(i)` its
/// argument `i`, the name being 0, of `argc`).
pub(super) fn redis_ttl<'a>(
    rules: &Validate,
    name: &[u8],
    argc: usize,
    arg: impl Fn(usize) -> &'a [u8],
) -> Result<(), String> {
    if !rules.require_ttl && rules.max_ttl_s.is_none() {
        return Ok(());
    }
    let number = |i: usize| -> Option<i64> {
        (i < argc).then(|| std::str::from_utf8(arg(i)).ok()?.parse().ok())?
    };
    let command = String::from_utf8_lossy(name);
    match name {
        b"SET" | b"GETEX" => {
            let first_option = if name == b"SET" { 3 } else { 2 };
            let mut expiry = false;
            let mut i = first_option;
            while i < argc {
                let option = arg(i);
                let is = |word: &[u8]| option.eq_ignore_ascii_case(word);
                match () {
                    () if is(b"EX") => {
                        expiry = true;
                        relative(rules, number(i + 1), 1)?;
                        i += 1;
                    }
                    () if is(b"PX") => {
                        expiry = true;
                        relative(rules, number(i + 1), 1000)?;
                        i += 1;
                    }
                    () if is(b"EXAT") || is(b"PXAT") => {
                        expiry = true;
                        absolute(rules)?;
                        i += 1;
                    }
                    () if is(b"KEEPTTL") => expiry = true,
                    () => {}
                }
                i += 1;
            }
            if name == b"SET" && rules.require_ttl && !expiry {
                return Err(
                    "validate require_ttl: 'SET' without EX, PX, EXAT, PXAT or KEEPTTL".into(),
                );
            }
            Ok(())
        }
        b"SETEX" | b"EXPIRE" => relative(rules, number(2), 1),
        b"PSETEX" | b"PEXPIRE" => relative(rules, number(2), 1000),
        b"EXPIREAT" | b"PEXPIREAT" => absolute(rules),
        b"SETNX" | b"MSET" | b"MSETNX" | b"GETSET" if rules.require_ttl => Err(format!(
            "validate require_ttl: '{command}' cannot set an expiry; use SET with EX"
        )),
        b"PERSIST" if rules.require_ttl => {
            Err("validate require_ttl: 'PERSIST' would remove the expiry".into())
        }
        _ => Ok(()),
    }
}

/// A relative expiry of `amount` units of `1/per_second` seconds.
fn relative(rules: &Validate, amount: Option<i64>, per_second: i64) -> Result<(), String> {
    match (rules.max_ttl_s, amount) {
        (Some(max), Some(n)) if n > (max as i64).saturating_mul(per_second) => {
            Err(format!("validate max_ttl_s: an expiry over {max} s"))
        }
        _ => Ok(()),
    }
}

/// An absolute expiry: the proxy has no wall clock to check it by.
fn absolute(rules: &Validate) -> Result<(), String> {
    match rules.max_ttl_s {
        Some(_) => Err(
            "validate max_ttl_s: an expiry at a Unix time cannot be checked; give seconds from now"
                .into(),
        ),
        None => Ok(()),
    }
}

/// The expiry rules for a memcached exptime (`None`: the command has
/// none); `stores`: it sets the item's expiry (an exptime of 0 then means
/// none).
pub(super) fn memcache_ttl(
    rules: &Validate,
    exptime: Option<i64>,
    stores: bool,
) -> Result<(), String> {
    let Some(exptime) = exptime else {
        return Ok(());
    };
    if stores && rules.require_ttl && exptime == 0 {
        return Err("validate require_ttl: a store without an expiry (exptime 0)".into());
    }
    if exptime > MEMCACHED_RELATIVE_LIMIT {
        return absolute(rules);
    }
    relative(rules, Some(exptime), 1)
}

/// A key as it may be shown in an error line.
fn printable(key: &[u8]) -> String {
    key.iter()
        .take(64)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Validate {
        Validate {
            key_patterns: vec!["app:*".into()],
            max_key_bytes: Some(10),
            max_value_bytes: Some(4),
            max_keys: Some(2),
            require_ttl: true,
            max_ttl_s: Some(60),
        }
    }

    #[test]
    fn keys_values_and_expiries_are_held_to_the_rules() {
        let r = rules();
        assert!(keys(&r, [&b"app:1"[..]].into_iter()).is_ok());
        assert!(keys(&r, [&b"other"[..]].into_iter())
            .unwrap_err()
            .starts_with("validate key_patterns"));
        assert!(keys(&r, [&b"app:123456789"[..]].into_iter())
            .unwrap_err()
            .starts_with("validate max_key_bytes"));
        assert!(keys(&r, [&b"app:1"[..], b"app:2", b"app:3"].into_iter())
            .unwrap_err()
            .starts_with("validate max_keys"));
        assert!(value(&r, 4).is_ok() && value(&r, 5).is_err());
        let ttl = |name: &[u8], args: &[&[u8]]| redis_ttl(&r, name, args.len(), |i| args[i]);
        let set = |extra: &[&[u8]]| {
            let args: Vec<&[u8]> = [&b"SET"[..], b"app:1", b"v"]
                .iter()
                .chain(extra)
                .copied()
                .collect();
            ttl(b"SET", &args)
        };
        assert!(set(&[]).unwrap_err().starts_with("validate require_ttl"));
        assert!(set(&[b"EX", b"60"]).is_ok());
        assert!(set(&[b"ex", b"61"])
            .unwrap_err()
            .starts_with("validate max_ttl_s"));
        assert!(set(&[b"PX", b"60000"]).is_ok() && set(&[b"PX", b"60001"]).is_err());
        assert!(set(&[b"EXAT", b"1"]).is_err());
        assert!(set(&[b"KEEPTTL"]).is_ok());
        assert!(ttl(b"SETEX", &[b"SETEX", b"k", b"61", b"v"]).is_err());
        assert!(ttl(b"MSET", &[b"MSET", b"k", b"v"]).is_err());
        assert!(ttl(b"GET", &[b"GET", b"k"]).is_ok());
        assert!(memcache_ttl(&r, Some(0), true).is_err());
        assert!(memcache_ttl(&r, Some(0), false).is_ok());
        assert!(memcache_ttl(&r, Some(60), true).is_ok());
        assert!(memcache_ttl(&r, Some(61), true).is_err());
        assert!(
            memcache_ttl(&r, Some(1_900_000_000), true).is_err(),
            "a Unix time"
        );
        assert!(memcache_ttl(&Validate::default(), Some(0), true).is_ok());
    }
}
