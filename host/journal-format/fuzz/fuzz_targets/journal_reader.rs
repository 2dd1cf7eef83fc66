//! Hostile journal bytes: the reader and the tape reader must return an
//! error or records, never panic, and never read past what they were given.
#![no_main]

use journal_format::{Journal, Located, Record, TapeReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a whole file, and behind a valid header, so the records get read.
    let header = journal_format::encode_header(&journal_format::Header {
        level: journal_format::Level::Written,
        address: 1,
        module: [0; 32],
        first_step: 0,
        base: [0; 16],
        base_digest: 0,
        created_ms: 0,
    });
    let mut with_header = header.to_vec();
    with_header.extend_from_slice(data);
    for bytes in [data, &with_header[..]] {
        let Ok(j) = Journal::open(bytes) else { continue };
        let _ = j.check();
        for r in j.records() {
            if let Ok(Located { record: Record::Init(s) | Record::Step(s), .. }) = r {
                let mut t = TapeReader::new(s.tape);
                while let Ok(Some(_)) = t.next_entry() {}
            }
        }
    }
    let mut t = TapeReader::new(data);
    while let Ok(Some(_)) = t.next_entry() {}
});
