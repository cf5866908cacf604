//! Any bytes: a record is refused or parsed, and a parsed one emits back
//! to a record that parses the same.
#![no_main]

use ferrox_handover::record::{ConnRecord, Record, LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(view) = Record::new_checked(bytes) else {
        return;
    };
    let Ok(record) = ConnRecord::parse(&view) else {
        return;
    };
    let mut again = [0u8; LEN];
    record.emit(&mut Record::new_unchecked(&mut again[..]));
    let back = ConnRecord::parse(&Record::new_checked(&again[..]).unwrap()).unwrap();
    assert_eq!(back, record);
});
