use super::*;
use proptest::prelude::*;

fn ring(capacity: u64) -> (Producer, Consumer) {
    let region = Region::heap(capacity * 2 + (64 << 10));
    create_ring(&region, "q", capacity).unwrap();
    (
        Producer::attach(&region, "q").unwrap(),
        Consumer::attach(&region, "q").unwrap(),
    )
}

fn pop_vec(consumer: &mut Consumer) -> Option<(u32, Vec<u8>)> {
    consumer.pop(|tag, payload| (tag, payload.to_vec()))
}

#[test]
fn messages_arrive_in_order_with_their_tags() {
    let (mut tx, mut rx) = ring(1024);
    assert!(pop_vec(&mut rx).is_none());
    tx.push(1, b"one").unwrap();
    tx.push(2, b"").unwrap();
    tx.push(3, &[7; 100]).unwrap();
    assert_eq!(pop_vec(&mut rx), Some((1, b"one".to_vec())));
    assert_eq!(pop_vec(&mut rx), Some((2, vec![])));
    assert_eq!(pop_vec(&mut rx), Some((3, vec![7; 100])));
    assert!(pop_vec(&mut rx).is_none());
}

#[test]
fn written_messages_stay_invisible_until_flushed() {
    let (mut tx, mut rx) = ring(1024);
    tx.write(1, b"a").unwrap();
    tx.write(2, b"b").unwrap();
    assert!(rx.is_empty());
    tx.flush();
    assert_eq!(rx.pop_burst(10, |_, _| {}), 2);
}

#[test]
fn a_full_ring_refuses_then_accepts_after_the_consumer_reads() {
    let (mut tx, mut rx) = ring(256);
    let mut sent = 0;
    while tx.push(sent, &[0; 24]).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 256 / 32, "each 24-byte message takes 32 bytes");
    assert_eq!(tx.push(99, &[0; 24]), Err(PushError::Full));
    assert_eq!(pop_vec(&mut rx).unwrap().0, 0);
    tx.push(99, &[0; 24]).unwrap();
}

#[test]
fn oversized_messages_and_reserved_tags_are_refused() {
    let (mut tx, _rx) = ring(256);
    assert_eq!(tx.max_message(), 120);
    assert_eq!(
        tx.push(0, &[0; 121]),
        Err(PushError::TooLarge { len: 121, max: 120 })
    );
    tx.push(0, &[0; 120]).unwrap();
    assert_eq!(
        tx.push(u32::MAX, b"x"),
        Err(PushError::ReservedTag(u32::MAX))
    );
}

#[test]
fn bad_capacities_are_refused() {
    let region = Region::heap(1 << 20);
    for cap in [0, 100, 32, 1 << 32] {
        assert!(matches!(
            create_ring(&region, &format!("q{cap}"), cap),
            Err(MqError::BadCapacity(_))
        ));
    }
}

#[test]
fn each_end_has_one_holder() {
    let region = Region::heap(1 << 20);
    create_ring(&region, "q", 1024).unwrap();
    let tx = Producer::attach(&region, "q").unwrap();
    let rx = Consumer::attach(&region, "q").unwrap();
    assert!(matches!(
        Producer::attach(&region, "q"),
        Err(MqError::Busy {
            end: "producer",
            ..
        })
    ));
    assert!(matches!(
        Consumer::attach(&region, "q"),
        Err(MqError::Busy {
            end: "consumer",
            ..
        })
    ));
    drop((tx, rx));
    assert!(Producer::attach(&region, "q").is_ok());
}

#[test]
fn a_sleeping_consumer_is_woken_by_the_producer() {
    let region = Region::heap(1 << 20);
    create_ring(&region, "q", 4096).unwrap();
    let mut rx = Consumer::attach(&region, "q").unwrap();
    let producer = {
        let region = region.clone();
        std::thread::spawn(move || {
            let mut tx = Producer::attach(&region, "q").unwrap();
            for i in 0..1000u32 {
                while tx.push(i, &i.to_le_bytes()).is_err() {
                    std::hint::spin_loop();
                }
                if i % 100 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut next = 0u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while next < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "consumer starved at {next}"
        );
        match rx.pop(|tag, p| (tag, u32::from_le_bytes(p.try_into().unwrap()))) {
            Some((tag, value)) => {
                assert_eq!((tag, value), (next, next));
                next += 1;
            }
            // Long timeout: a lost wake-up shows as a stall, not a pass.
            None => assert!(
                rx.wait(Duration::from_secs(10)).unwrap(),
                "no wake-up at {next}"
            ),
        }
    }
    producer.join().unwrap();
}

#[test]
fn the_busy_path_does_not_ring() {
    let (mut tx, mut rx) = ring(1024);
    tx.push(1, b"x").unwrap();
    assert!(
        tx.wake_fd.is_none(),
        "consumer not asleep: no eventfd needed"
    );
    assert!(!rx.prepare_sleep(), "a waiting message cancels the sleep");
    rx.woken();
    pop_vec(&mut rx).unwrap();
    assert!(rx.prepare_sleep());
    tx.push(2, b"y").unwrap();
    assert!(tx.wake_fd.is_some(), "sleeping consumer gets rung");
    assert!(doorbell::wait_readable(rx.wake_fd(), Duration::ZERO).unwrap());
    rx.woken();
    assert!(
        !doorbell::wait_readable(rx.wake_fd(), Duration::ZERO).unwrap(),
        "woken drains the eventfd"
    );
}

#[test]
fn fanin_merges_lanes_and_wakes_its_consumer() {
    let region = Region::heap(1 << 20);
    fanin::create(&region, "in", 3, 1024).unwrap();
    let mut rx = fanin::Consumer::attach(&region, "in").unwrap();
    let mut lanes: Vec<_> = (0..3)
        .map(|_| fanin::producer(&region, "in").unwrap())
        .collect();
    assert!(matches!(
        fanin::producer(&region, "in"),
        Err(MqError::NoFreeLane(_))
    ));
    assert!(rx.prepare_sleep());
    lanes[2].push(20, b"c").unwrap();
    assert!(rx.wait(Duration::from_secs(5)).unwrap());
    lanes[0].push(0, b"a").unwrap();
    lanes[1].push(10, b"b").unwrap();
    let mut tags = Vec::new();
    while let Some(tag) = rx.pop(|tag, _| tag) {
        tags.push(tag);
    }
    tags.sort();
    assert_eq!(tags, vec![0, 10, 20]);
    assert!(rx.is_empty());
    lanes.pop();
    assert!(
        fanin::producer(&region, "in").is_ok(),
        "a dropped producer frees its lane"
    );
}

/// Longest generated sequence (Miri interprets every step: keep it short there).
const MAX_STEPS: usize = if cfg!(miri) { 60 } else { 400 };

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    /// Any interleaving of pushes and pops of any sizes keeps FIFO order and
    /// contents across many wrap-arounds of a small ring.
    #[test]
    fn wraparound_preserves_order_and_content(
        steps in proptest::collection::vec((any::<bool>(), 0usize..=56), 1..MAX_STEPS)
    ) {
        let (mut tx, mut rx) = ring(128);
        let mut expected = std::collections::VecDeque::new();
        let mut seq = 0u32;
        for (push, len) in steps {
            if push {
                let payload: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
                match tx.push(seq, &payload) {
                    Ok(()) => {
                        expected.push_back((seq, payload));
                        seq += 1;
                    }
                    Err(PushError::Full) => prop_assert!(!expected.is_empty()),
                    Err(e) => panic!("{e}"),
                }
            } else {
                prop_assert_eq!(pop_vec(&mut rx), expected.pop_front());
            }
        }
        while let Some(want) = expected.pop_front() {
            prop_assert_eq!(pop_vec(&mut rx), Some(want));
        }
        prop_assert!(pop_vec(&mut rx).is_none());
    }
}
