use crate::*;
use proptest::prelude::*;

fn header(from_spawn: bool) -> Header {
    Header {
        level: Level::Synced,
        address: 0x0001_0200_0000_0042,
        module: [7; 32],
        first_step: if from_spawn { 0 } else { 1000 },
        base: if from_spawn { [0; 16] } else { [9; 16] },
        base_digest: if from_spawn { 0 } else { 0xdead_beef },
        created_ms: 1_700_000_000_000,
    }
}

fn with_failed(s: &OwnedStep, failed: bool) -> Step<'_> {
    Step { failed, ..s.step() }
}

fn any_step() -> impl Strategy<Value = OwnedStep> {
    (1u8..4, 0u8..2, any::<u64>(), prop_oneof![Just(0u64), any::<u64>()], any::<u32>(), any_tape(), proptest::collection::vec(any::<u8>(), 0..200))
        .prop_map(|(kind, flags, from, corr, digest, tape, payload)| OwnedStep { kind, flags, from, corr, failed: false, digest, tape, payload })
}

fn any_entry() -> impl Strategy<Value = (u8, i64, u64, Vec<u8>, bool)> {
    (1u8..14, any::<i64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40), any::<bool>())
}

fn build_tape(entries: &[(u8, i64, u64, Vec<u8>, bool)]) -> (Vec<u8>, Vec<String>) {
    let mut w = TapeWriter::default();
    let mut shown = Vec::new();
    for (c, v, u, bytes, flag) in entries {
        let call = Call::from_byte(*c).unwrap();
        let e = match call {
            Call::BlobRead => {
                if *flag {
                    Entry::BlobRead { result: bytes.len() as i64, bytes }
                } else {
                    Entry::BlobRead { result: -7, bytes: &[] }
                }
            }
            Call::Clock => Entry::Clock { id: (*u % 4) as u32, errno: if *flag { 0 } else { 8 }, time: if *flag { *u } else { 0 } },
            Call::Random => {
                if *flag {
                    Entry::Random { errno: 0, bytes }
                } else {
                    Entry::Random { errno: 21, bytes: &[] }
                }
            }
            Call::Grow => Entry::Grow { desired: *u, outcome: (*v as u8) % 4 },
            call => Entry::Value { call, value: *v },
        };
        shown.push(format!("{e:?}"));
        w.push(&e);
    }
    (w.bytes().to_vec(), shown)
}

fn any_tape() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any_entry(), 0..6).prop_map(|es| build_tape(&es).0)
}

fn journal(from_spawn: bool, steps: &[OwnedStep], tail: Option<&str>, end: bool) -> Vec<u8> {
    let mut out = encode_header(&header(from_spawn)).to_vec();
    let mut e = Encoder::new();
    for (i, s) in steps.iter().enumerate() {
        let failed = tail.is_some() && i + 1 == steps.len();
        let r = if i == 0 && from_spawn { Record::Init(with_failed(s, failed)) } else { Record::Step(with_failed(s, failed)) };
        e.encode(&r, &mut out);
    }
    if let Some(t) = tail {
        e.encode(&Record::Failure(t), &mut out);
    } else if end {
        e.encode(&Record::End { next: [3; 16], digest: 77 }, &mut out);
    }
    out
}

/// Start offsets of each record (and the file's end).
fn boundaries(bytes: &[u8]) -> Vec<u64> {
    let j = Journal::open(bytes).unwrap();
    let mut b: Vec<u64> = j.records().map(|r| r.unwrap().offset).collect();
    b.push(bytes.len() as u64);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn records_read_back_as_written(from_spawn: bool, steps in proptest::collection::vec(any_step(), 1..8), fail: bool, end: bool) {
        let tail = fail.then_some("trap: unreachable\nbacktrace: 0: f");
        let bytes = journal(from_spawn, &steps, tail, end);
        let j = Journal::open(&bytes).unwrap();
        prop_assert_eq!(*j.header(), header(from_spawn));
        let recs: Vec<_> = j.records().collect::<Result<_, _>>().unwrap();
        let first = header(from_spawn).first_step;
        for (i, s) in steps.iter().enumerate() {
            let failed = fail && i + 1 == steps.len();
            let want = with_failed(s, failed);
            let got = match recs[i].record { Record::Init(s) | Record::Step(s) => s, r => panic!("{r:?}") };
            prop_assert_eq!(got, want);
            prop_assert_eq!(recs[i].step, first + i as u64);
            prop_assert_eq!(matches!(recs[i].record, Record::Init(_)), from_spawn && i == 0);
        }
        let summary = j.check().unwrap();
        prop_assert_eq!(summary.steps, steps.len() as u64);
        prop_assert_eq!(summary.failed.map(|f| f.0), fail.then_some(first + steps.len() as u64 - 1));
        prop_assert_eq!(summary.end.is_some(), !fail && end);
    }

    /// Every single damaged byte is refused, at the record holding it.
    #[test]
    fn a_damaged_byte_is_refused_at_its_record(steps in proptest::collection::vec(any_step(), 1..5), flip in 1u8..=255) {
        let bytes = journal(true, &steps, None, true);
        let bounds = boundaries(&bytes);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= flip;
            let result = Journal::open(&bad).and_then(|j| j.check());
            let err = result.expect_err("a damaged byte must be refused");
            if at < HEADER_LEN {
                prop_assert!(matches!(err, JournalError::NotAJournal | JournalError::Version(_) | JournalError::Header(_)), "{at}: {err}");
            } else {
                let record = bounds.iter().rposition(|&b| b <= at as u64).unwrap() as u64;
                let named = match &err {
                    JournalError::Torn { record, .. } | JournalError::Damaged { record, .. } | JournalError::Malformed { record, .. } => *record,
                    e => panic!("byte {at}: {e}"),
                };
                prop_assert_eq!(named, record, "byte {}: {}", at, err);
                let want = format!("record {record}");
                prop_assert!(err.to_string().contains(&want));
            }
        }
    }

    /// A file cut anywhere reads every record before the cut, then says
    /// where the last write was cut.
    #[test]
    fn a_cut_file_is_torn_at_the_cut(steps in proptest::collection::vec(any_step(), 1..5)) {
        let bytes = journal(false, &steps, None, false);
        let bounds = boundaries(&bytes);
        for cut in HEADER_LEN..bytes.len() {
            let j = Journal::open(&bytes[..cut]).unwrap();
            let whole = bounds.iter().filter(|&&b| b <= cut as u64).count() - 1;
            let results: Vec<_> = j.records().collect();
            let ok = results.iter().filter(|r| r.is_ok()).count();
            prop_assert_eq!(ok, whole);
            if bounds.contains(&(cut as u64)) {
                prop_assert!(results.iter().all(|r| r.is_ok()));
            } else {
                prop_assert_eq!(results.last().unwrap().clone().unwrap_err(), JournalError::Torn { record: whole as u64, offset: bounds[whole] });
            }
        }
    }

    #[test]
    fn tapes_read_back_as_written(entries in proptest::collection::vec(any_entry(), 0..12)) {
        let (bytes, shown) = build_tape(&entries);
        let mut r = TapeReader::new(&bytes);
        let mut got = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            got.push(format!("{e:?}"));
        }
        prop_assert_eq!(got, shown);
        prop_assert!(r.is_done());
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), header_ok: bool) {
        let mut r = TapeReader::new(&bytes);
        while let Ok(Some(_)) = r.next_entry() {}
        let mut file = if header_ok { encode_header(&header(true)).to_vec() } else { Vec::new() };
        file.extend_from_slice(&bytes);
        if let Ok(j) = Journal::open(&file) {
            for r in j.records() {
                if let Ok(Located { record: Record::Init(s) | Record::Step(s), .. }) = r {
                    let mut t = TapeReader::new(s.tape);
                    while let Ok(Some(_)) = t.next_entry() {}
                }
            }
        }
    }
}

#[test]
fn records_out_of_place_are_refused() {
    let s = OwnedStep { kind: 1, flags: 0, from: 1, corr: 0, failed: false, digest: 0, tape: vec![], payload: vec![1] };
    // A segment from a snapshot may not hold an init call.
    let mut out = encode_header(&header(false)).to_vec();
    Encoder::new().encode(&Record::Init(with_failed(&s, false)), &mut out);
    let err = Journal::open(&out).unwrap().check().unwrap_err();
    assert!(err.to_string().contains("init call that is not the first"), "{err}");
    // Nothing after an end.
    let mut out = encode_header(&header(false)).to_vec();
    let mut e = Encoder::new();
    e.encode(&Record::End { next: [1; 16], digest: 0 }, &mut out);
    e.encode(&Record::Step(with_failed(&s, false)), &mut out);
    let err = Journal::open(&out).unwrap().check().unwrap_err();
    assert!(err.to_string().contains("record 1") && err.to_string().contains("after the segment's end"), "{err}");
    // A failed call must be followed by its failure.
    let mut out = encode_header(&header(false)).to_vec();
    let mut e = Encoder::new();
    e.encode(&Record::Step(with_failed(&s, true)), &mut out);
    e.encode(&Record::Step(with_failed(&s, false)), &mut out);
    assert!(Journal::open(&out).unwrap().check().unwrap_err().to_string().contains("not followed by its failure"));
    // Records swapped fail their checks (the index is in the seed).
    let mut a = Vec::new();
    Encoder::at(1).encode(&Record::Step(with_failed(&s, false)), &mut a);
    let mut out = encode_header(&header(false)).to_vec();
    out.extend_from_slice(&a);
    assert!(matches!(Journal::open(&out).unwrap().check(), Err(JournalError::Damaged { record: 0, .. })));
}

#[test]
fn a_message_costs_few_bytes_beyond_its_payload() {
    // Requests from one sender, each answered with a reply that succeeded:
    // the sender is coded once, each correlation id as a small difference.
    let mut w = TapeWriter::default();
    w.push(&Entry::Value { call: Call::Reply, value: 0 });
    let payload = [0u8; 100];
    let mut e = Encoder::new();
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..10u64 {
        let s = Step { kind: 2, flags: 0, from: 1 << 48 | 5, corr: (1 << 48 | 99) + 256 * i, failed: false, digest: 1, tape: w.bytes(), payload: &payload };
        let before = out.len();
        e.encode(&Record::Step(s), &mut out);
        sizes.push(out.len() - before - payload.len());
    }
    assert!(sizes[1..].iter().all(|&n| n <= 16), "bytes beyond the payload: {sizes:?}");
    // They read back with their senders and correlation ids.
    let mut file = encode_header(&header(false)).to_vec();
    file.extend_from_slice(&out);
    let j = Journal::open(&file).unwrap();
    for (i, r) in j.records().enumerate() {
        let Record::Step(s) = r.unwrap().record else { panic!() };
        assert_eq!((s.from, s.corr), (1 << 48 | 5, (1 << 48 | 99) + 256 * i as u64));
    }
}

#[test]
fn varints_refuse_overlong_and_too_wide_forms() {
    use crate::tape::get_varint;
    let read = |b: &[u8], bits| get_varint(b, &mut 0, bits);
    assert_eq!(read(&[0x00], 32), Ok(0));
    assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0x0f], 32), Ok(u32::MAX as u64));
    assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0x1f], 32), Err(Some(0)));
    assert_eq!(read(&[0x80, 0x00], 32), Err(Some(0)));
    assert_eq!(read(&[0x80], 32), Err(None));
    let mut max = vec![0xff; 9];
    max.push(0x01);
    assert_eq!(read(&max, 64), Ok(u64::MAX));
    max[9] = 0x02;
    assert_eq!(read(&max, 64), Err(Some(0)));
}
