//! The hub's own tests: queues, falling behind, catching up, routing.

use super::*;

fn frame(ms: u64) -> Arc<Frame> {
    Arc::new(Frame {
        stream_id: StreamId::new(ms, 0),
        channel: Arc::from("default"),
        received_at_us: 0,
        text: ByteString::from(format!("{ms}")),
    })
}

fn everything() -> Arc<Filter> {
    Arc::new(Filter::all())
}

fn on(ms: u64, channel: &str) -> Arc<Frame> {
    Arc::new(Frame {
        stream_id: StreamId::new(ms, 0),
        channel: Arc::from(channel),
        received_at_us: 0,
        text: ByteString::from(format!("{ms}")),
    })
}

#[test]
fn a_client_gets_only_its_channels_live_and_when_it_catches_up() {
    let hub = Hub::new(2, 1 << 20, 10);
    hub.start_at(StreamId::new(0, 0));
    let patterns = vec!["chat.*".parse().unwrap(), "news".parse().unwrap()];
    let mut chat = hub
        .subscribe(Arc::new(Filter::new(patterns, 10).unwrap()))
        .unwrap();
    hub.publish(&[on(1, "chat.a"), on(2, "other"), on(3, "news")]);
    assert_eq!(
        ms_of(&std::iter::from_fn(|| chat.try_recv()).collect::<Vec<_>>()),
        [1, 3]
    );
    assert_eq!(hub.publish(&[on(4, "other"), on(5, "other")]), 0);
    assert!(!chat.behind.is_behind());
    assert!(chat.try_recv().is_none());
    // Behind: it catches up on its channels only, and is live again once none is missing.
    hub.publish(&[on(6, "chat.b"), on(7, "chat.c"), on(8, "chat.d")]);
    assert!(chat.behind.is_behind());
    let queued: Vec<_> = std::iter::from_fn(|| chat.try_recv()).collect();
    assert_eq!(ms_of(&queued), [6, 7]);
    let CatchUp::Frames(missed) = hub.catch_up(chat.id, StreamId::new(7, 0), 10) else {
        panic!("the history holds what it missed")
    };
    assert_eq!(ms_of(&missed), [8]);
    hub.publish(&[on(9, "other")]);
    let CatchUp::Live(mut again) = hub.catch_up(chat.id, StreamId::new(8, 0), 10) else {
        panic!("nothing of its channels is missing: live again")
    };
    hub.publish(&[on(10, "news")]);
    assert_eq!(again.try_recv().unwrap().stream_id.ms, 10);
}

fn ms_of(frames: &[Arc<Frame>]) -> Vec<u64> {
    frames.iter().map(|f| f.stream_id.ms).collect()
}

#[test]
fn a_client_over_its_queue_falls_behind_catches_up_and_rejoins_exactly_where_it_stopped() {
    let hub = Hub::new(3, 1 << 20, 10);
    hub.start_at(StreamId::new(0, 0));
    let mut fast = hub.subscribe(everything()).unwrap();
    let mut slow = hub.subscribe(everything()).unwrap();
    for ms in 1..=3 {
        assert_eq!(hub.publish(&[frame(ms)]), 0);
        assert_eq!(fast.try_recv().unwrap().stream_id.ms, ms);
    }
    assert_eq!(
        hub.publish(&[frame(4)]),
        1,
        "the slow client's fourth frame overflows"
    );
    assert!(slow.behind.is_behind());
    assert_eq!(fast.try_recv().unwrap().stream_id.ms, 4);
    assert_eq!(
        hub.publish(&[frame(5), frame(6)]),
        0,
        "it falls behind once"
    );
    // The slow client gets what was queued, then the end of its queue.
    let queued: Vec<_> = std::iter::from_fn(|| slow.try_recv()).collect();
    assert_eq!(ms_of(&queued), [1, 2, 3]);
    assert_eq!(hub.len(), 2, "a client catching up is still connected");
    let CatchUp::Frames(missed) = hub.catch_up(slow.id, StreamId::new(3, 0), 2) else {
        panic!("the history holds what it missed")
    };
    assert_eq!(ms_of(&missed), [4, 5], "at most the page asked for");
    let CatchUp::Frames(missed) = hub.catch_up(slow.id, StreamId::new(5, 0), 2) else {
        panic!("the history holds what it missed")
    };
    assert_eq!(ms_of(&missed), [6]);
    let CatchUp::Live(mut again) = hub.catch_up(slow.id, StreamId::new(6, 0), 2) else {
        panic!("nothing is missing: live again")
    };
    assert_eq!(again.position, StreamId::new(6, 0));
    assert!(!again.behind.is_behind());
    hub.publish(&[frame(7)]);
    assert_eq!(
        again.try_recv().unwrap().stream_id.ms,
        7,
        "live from there on"
    );
    assert_eq!(hub.len(), 2);
    assert_eq!(
        hub.subscribe(everything()).unwrap().position,
        StreamId::new(7, 0),
        "new clients start after the last frame"
    );
}

#[test]
fn the_history_is_bounded_and_says_when_it_no_longer_reaches_back() {
    // A queue of 2 keeps 32 frames of history.
    let hub = Hub::new(2, 1 << 20, 10);
    hub.start_at(StreamId::new(0, 0));
    let slow = hub.subscribe(everything()).unwrap();
    for ms in 1..=40 {
        hub.publish(&[frame(ms)]);
    }
    assert!(slow.behind.is_behind());
    assert!(matches!(
        hub.catch_up(slow.id, StreamId::new(2, 0), 100),
        CatchUp::Evicted
    ));
    assert!(
        matches!(hub.catch_up(slow.id, StreamId::new(8, 0), 100), CatchUp::Frames(f) if ms_of(&f) == (9..=40).collect::<Vec<_>>())
    );
    // Bytes bound it too: 4 × 10 bytes of queue keeps 40 bytes of frames (one frame at least).
    let hub = Hub::new(1000, 10, 10);
    hub.start_at(StreamId::new(0, 0));
    let slow = hub.subscribe(everything()).unwrap();
    hub.publish(&[sized(1, 30), sized(2, 30)]);
    assert!(matches!(
        hub.catch_up(slow.id, StreamId::new(0, 0), 100),
        CatchUp::Evicted
    ));
    hub.publish(&[sized(3, 100)]);
    assert!(
        matches!(hub.catch_up(slow.id, StreamId::new(2, 0), 100), CatchUp::Frames(f) if ms_of(&f) == [3])
    );
}

fn sized(ms: u64, bytes: usize) -> Arc<Frame> {
    Arc::new(Frame {
        stream_id: StreamId::new(ms, 0),
        channel: Arc::from("default"),
        received_at_us: 0,
        text: ByteString::from("x".repeat(bytes)),
    })
}

#[test]
fn a_client_over_its_queue_bytes_falls_behind_though_its_frame_count_is_low() {
    let hub = Hub::new(1000, 10_000, 10);
    hub.start_at(StreamId::new(0, 0));
    let mut reader = hub.subscribe(everything()).unwrap();
    let idle = hub.subscribe(everything()).unwrap();
    assert_eq!(hub.publish(&[sized(1, 6_000)]), 0);
    assert_eq!(reader.try_recv().unwrap().text.len(), 6_000);
    assert_eq!(
        hub.publish(&[sized(2, 6_000)]),
        1,
        "12,000 bytes waiting for the idle client is over 10,000"
    );
    assert!(idle.behind.is_behind());
    assert!(!reader.behind.is_behind(), "the reader's queue emptied");
    assert_eq!(reader.try_recv().unwrap().text.len(), 6_000);
    assert_eq!(
        hub.publish(&[sized(3, 50_000)]),
        0,
        "one frame over the budget still goes to a client with nothing waiting"
    );
}

#[test]
fn the_connection_cap_refuses_clients() {
    let hub = Hub::new(1, 1 << 20, 2);
    assert_eq!(hub.subscribe(everything()).err(), Some(Refused::NotReady));
    hub.start_at(StreamId::new(0, 0));
    let _a = hub.subscribe(everything()).unwrap();
    let b = hub.subscribe(everything()).unwrap();
    assert!(hub.subscribe(everything()).is_err());
    hub.unsubscribe(b.id);
    assert!(hub.subscribe(everything()).is_ok());
}
