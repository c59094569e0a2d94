use super::*;
use proptest::prelude::*;
use redis::Value;

/// RESP2 bytes of a reply tree, as Redis would send them.
fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.extend_from_slice(b"*-1\r\n"),
        Value::BulkString(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::SimpleString(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            items.iter().for_each(|i| encode(i, out));
        }
        other => panic!("not in an XREADGROUP reply: {other:?}"),
    }
}

fn bytes_of(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(v, &mut out);
    out
}

fn bulk(s: &[u8]) -> Value {
    Value::BulkString(s.to_vec())
}

/// An entry's id and its fields (`None`: deleted while pending).
type Entry = (String, Option<Vec<(String, Vec<u8>)>>);

fn reply(entries: Vec<Entry>) -> Value {
    let entries = entries
        .into_iter()
        .map(|(id, fields)| {
            let fields = match fields {
                None => Value::Nil,
                Some(f) => Value::Array(
                    f.iter()
                        .flat_map(|(k, v)| [bulk(k.as_bytes()), bulk(v)])
                        .collect(),
                ),
            };
            Value::Array(vec![bulk(id.as_bytes()), fields])
        })
        .collect();
    Value::Array(vec![Value::Array(vec![
        bulk(b"relay:messages"),
        Value::Array(entries),
    ])])
}

#[test]
fn a_reply_is_complete_only_with_its_last_byte_and_says_what_it_needs_before() {
    let v = reply(vec![
        (
            "1-0".into(),
            Some(vec![("payload".into(), b"{\"a\":\"\r\n\"}".to_vec())]),
        ),
        ("2-0".into(), None),
    ]);
    let bytes = bytes_of(&v);
    for cut in 0..bytes.len() {
        match reply_len(&bytes[..cut]).unwrap() {
            Scan::Needs(n) => assert!(n > cut && n <= bytes.len(), "cut {cut}: needs {n}"),
            Scan::Complete(n) => panic!("cut {cut}: complete at {n}"),
        }
    }
    // In pieces, one scan going on from where the last stopped: the same answers.
    for step in [1, 2, 7] {
        let mut scan = ReplyScan::default();
        let mut cut = 0;
        let done = loop {
            cut = (cut + step).min(bytes.len());
            match scan.scan(&bytes[..cut]).unwrap() {
                Scan::Complete(n) => break n,
                Scan::Needs(n) => assert!(n > cut && n <= bytes.len()),
            }
        };
        assert_eq!((done, cut), (bytes.len(), bytes.len()), "step {step}");
    }
    let mut more = bytes.clone();
    more.extend_from_slice(b"+OK\r\n");
    assert_eq!(reply_len(&more), Ok(Scan::Complete(bytes.len())));
    assert_eq!(reply_len(b"*-1\r\n"), Ok(Scan::Complete(5)));
}

#[test]
fn error_replies_and_broken_bytes_are_told_apart() {
    let nogroup = b"-NOGROUP No such key 'k' or consumer group 'persister'\r\n";
    assert_eq!(reply_len(nogroup), Ok(Scan::Complete(nogroup.len())));
    assert_eq!(
        read_reply(nogroup).unwrap_err(),
        ReplyError::Redis("NOGROUP No such key 'k' or consumer group 'persister'".into())
    );
    assert_eq!(read_reply(nogroup).unwrap_err().code(), Some("NOGROUP"));
    assert_eq!(ReplyError::Redis("no code".into()).code(), None);
    assert_eq!(ReplyError::Protocol("x").code(), None);
    let deep = b"*999999999999999999\r\n".repeat(20);
    for broken in [
        &b"?1\r\n"[..],
        b"$x\r\n",
        b"$3\r\nabcd\r\n",
        b"*-2\r\n",
        b"$1\rx",
        b"\r\n",
        b"*1\r\n\r\n",
        &deep,
    ] {
        assert!(
            matches!(reply_len(broken), Err(ReplyError::Protocol(_))),
            "{broken:?}"
        );
    }
    assert_eq!(read_reply(b"*-1\r\n"), Ok(vec![]));
    assert!(read_reply(b"*1\r\n\r\n").is_err());
    assert!(read_reply(b":1\r\n").is_err());
}

fn field() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        "[a-z_]{0,12}",
        proptest::collection::vec(any::<u8>(), 0..64),
    )
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec(
        (
            "[0-9]{1,13}-[0-9]{1,4}",
            proptest::option::weighted(0.9, proptest::collection::vec(field(), 0..6)),
        ),
        0..20,
    )
}

proptest! {
    #[test]
    fn bytes_read_as_redis_rs_reads_its_value(entries in entries()) {
        let v = reply(entries);
        let bytes = bytes_of(&v);
        prop_assert_eq!(reply_len(&bytes), Ok(Scan::Complete(bytes.len())));
        let ours = read_reply(&bytes).unwrap();
        let theirs = crate::redis_stream::read_reply(v);
        prop_assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            prop_assert_eq!(&a.id, &b.id);
            prop_assert_eq!(&a.fields, &b.fields);
        }
    }

    #[test]
    fn any_bytes_are_a_reply_an_error_or_not_yet_never_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Ok(Scan::Complete(n)) = reply_len(&bytes) {
            let _ = read_reply(&bytes[..n]);
        }
    }
}
