//! The FastCGI connection parser on arbitrary bytes, fed in two reads split at `data[0]`:
//! never panic, leave no complete record behind, keep each id's events in order, and
//! agree with the `whole_request` fast path. Also `parse_pairs` on the raw bytes.
//! Run: `cargo +nightly fuzz run fastcgi_conn` (from the repo root).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::proto::fastcgi::{self as fcgi, ConnLimits, ConnParser, Event, Values};

const MAX_PARAMS: usize = 1024;

fn limits() -> ConnLimits {
    ConnLimits {
        max_params: MAX_PARAMS,
        max_reqs: 2,
        values: Values {
            max_conns: 4,
            max_reqs: 2,
            mpxs_conns: true,
        },
    }
}

/// Feeds `data` in two reads; returns the events and whether it ended in an error.
fn run(data: &[u8], split: usize) -> (Vec<Event>, bool) {
    let mut parser = ConnParser::new(limits());
    // `feed` names the type (a `bytes::BytesMut`): this crate needs no `bytes` dependency.
    let mut buf = Default::default();
    let mut events = Vec::new();
    assert_eq!(parser.feed(&mut buf, &mut events), Ok(()));
    for read in [&data[..split], &data[split..]] {
        buf.extend_from_slice(read);
        if parser.feed(&mut buf, &mut events).is_err() {
            return (events, true);
        }
        assert_eq!(
            fcgi::parse_record(&buf),
            Ok(None),
            "a complete record was left"
        );
    }
    // Every id with events is active, and no id has more requests than allowed.
    assert!(parser.active() <= 2);
    for event in &events {
        match event {
            Event::Params { id, .. }
            | Event::Stdin { id, .. }
            | Event::StdinEnd { id }
            | Event::Abort { id } => {
                assert!(parser.is_active(*id))
            }
            Event::Reply(bytes) => assert!(!bytes.is_empty() && bytes.len() % 8 == 0),
        }
    }
    (events, false)
}

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    let split = usize::from(first).min(data.len());
    let (events, failed) = run(data, split);

    // Per id: Params first and at most once, with the block within the limit; Stdin only
    // between Params and StdinEnd.
    let mut seen: std::collections::HashMap<u16, (bool, bool)> = Default::default();
    for event in &events {
        match event {
            Event::Params { id, params, .. } => {
                assert!(params.len() <= MAX_PARAMS);
                let state = seen.entry(*id).or_default();
                assert!(!state.0, "Params twice for {id}");
                state.0 = true;
                let _ = fcgi::parse_pairs(params);
            }
            Event::Stdin { id, data } => {
                assert!(!data.is_empty());
                assert_eq!(
                    seen.get(id),
                    Some(&(true, false)),
                    "Stdin out of order for {id}"
                );
            }
            Event::StdinEnd { id } => {
                let state = seen.get_mut(id).expect("StdinEnd before Params");
                assert!(state.0 && !state.1);
                state.1 = true;
            }
            Event::Abort { id } => assert!(seen.get(id).is_some_and(|s| s.0)),
            Event::Reply(_) => {}
        }
    }

    // The fast path only takes what the slow path reads the same way.
    if let Some(whole) = fcgi::whole_request(data, MAX_PARAMS, usize::MAX) {
        assert!(!failed);
        let mut body = Vec::new();
        let mut rest = events.iter();
        assert_eq!(
            rest.next(),
            Some(&Event::Params {
                id: whole.id,
                keep_conn: whole.keep_conn,
                params: whole.params.clone()
            })
        );
        for event in rest {
            match event {
                Event::Stdin { id, data } if *id == whole.id => body.extend_from_slice(data),
                Event::StdinEnd { id } if *id == whole.id => {}
                other => panic!("whole_request took a stream with {other:?}"),
            }
        }
        assert_eq!(body, whole.stdin);
        assert_eq!(events.last(), Some(&Event::StdinEnd { id: whole.id }));
    }

    if let Ok(pairs) = fcgi::parse_pairs(data) {
        for (name, value) in pairs {
            assert!(name.start < name.end && name.end <= value.start);
            assert!(value.start <= value.end && value.end as usize <= data.len());
        }
    }
    let mut out = Vec::new();
    fcgi::encode_get_values_result(&mut out, data, &limits().values);
    assert!(fcgi::parse_record(&out).unwrap().is_some());
});
