use super::*;

/// The line env_logger wrote before (`[2026-12-04T08:16:31Z INFO  access] …`) and the JSON line,
/// to the byte.
#[test]
fn lines_are_written_as_env_logger_wrote_them() {
    let at = UNIX_EPOCH + Duration::from_micros(1_796_372_191_123_456);
    let mut out = Vec::new();
    text_line(
        &mut out,
        &log::Record::builder()
            .args(format_args!("POST /messages 202 0.477ms request_id=abc"))
            .level(log::Level::Info)
            .target("access")
            .build(),
        at,
    );
    text_line(
        &mut out,
        &log::Record::builder()
            .args(format_args!("oops"))
            .level(log::Level::Error)
            .target("service::run")
            .build(),
        at + Duration::from_secs(1),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[2026-12-04T08:16:31Z INFO  access] POST /messages 202 0.477ms request_id=abc\n\
         [2026-12-04T08:16:32Z ERROR service::run] oops\n"
    );
    let mut out = Vec::new();
    json_line(
        &mut out,
        &log::Record::builder()
            .args(format_args!("a \"quoted\" line"))
            .level(log::Level::Warn)
            .target("access")
            .build(),
        at,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"level":"WARN","msg":"a \"quoted\" line","target":"access","ts":"2026-12-04T08:16:31.123456Z"}"#
            .to_owned()
            + "\n"
    );
}

#[test]
fn the_threads_lines_are_written_in_the_order_they_were_logged() {
    let record = |seq: u64, line: &str| {
        let mut r = seq.to_le_bytes().to_vec();
        r.extend_from_slice(&(line.len() as u32).to_le_bytes());
        r.extend_from_slice(line.as_bytes());
        r
    };
    let main = [record(3, "stopped\n")].concat();
    let worker = [
        record(1, "SIGTERM received\n"),
        record(2, "worker shut down\n"),
    ]
    .concat();
    let idle = Vec::new();
    let mut out = Vec::new();
    merge(&[main, idle, worker], &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "SIGTERM received\nworker shut down\nstopped\n"
    );
}

#[test]
fn a_repeated_cause_logs_once_per_interval() {
    assert_eq!(throttled("test-cause"), Some(0));
    assert_eq!(throttled("test-cause"), None);
    assert_eq!(throttled("test-cause"), None);
    assert_eq!(throttled("other-cause"), Some(0));
}
