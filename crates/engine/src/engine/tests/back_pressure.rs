//! What the engine asks of the runtime when output cannot leave: no
//! `Send` for output the runtime already saw, input stopped by unsent
//! replies, and a wake-up when room is back. Driven through the engine's
//! own API, as a runtime whose socket is full would.

use super::*;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

fn engine_with(edit: impl FnOnce(&mut PoolSpec)) -> (Engine, Tag) {
    let mut pool = spec(1);
    edit(&mut pool);
    let mut engine = Engine::new(vec![pool], 1);
    let tag = engine.accept(0, 1).expect("room");
    (engine, tag)
}

fn actions(engine: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

#[test]
fn input_that_adds_no_output_asks_for_no_send() {
    let (mut engine, client) = engine_with(|_| {});
    assert_eq!(engine.handle_input(client, &PING.repeat(2), 0), 28);
    assert_eq!(actions(&mut engine), vec![Action::Send(1)]);
    // The runtime looks but its socket is full: nothing sent.
    assert_eq!(engine.output(client), b"+PONG\r\n+PONG\r\n");
    // Part of a request: nothing to answer, so nothing to ask.
    assert_eq!(engine.handle_input(client, b"*1\r\n$4\r\nPI", 0), 0);
    assert_eq!(actions(&mut engine), vec![]);
    // The rest: a new reply, so one Send.
    assert_eq!(engine.handle_input(client, PING, 0), 14);
    assert_eq!(actions(&mut engine), vec![Action::Send(1)]);
    assert_eq!(engine.output(client).len(), 21);
    engine.output_acked(client, 21);
    assert!(engine.output(client).is_empty());
}

#[test]
fn unsent_replies_stop_input_until_they_leave() {
    let (mut engine, client) = engine_with(|p| p.max_output = 70);
    let input = PING.repeat(20);
    let used = engine.handle_input(client, &input, 0);
    assert_eq!(used, 10 * 14, "input stops at 70 bytes of replies");
    assert!(!engine.wants_input(client));
    assert_eq!(actions(&mut engine), vec![Action::Send(1)]);
    let n = engine.output(client).len();
    engine.output_acked(client, n);
    assert!(engine.wants_input(client), "room again once they left");
    assert_eq!(engine.handle_input(client, &input[used..], 0), 10 * 14);
}

#[test]
fn a_full_pipeline_asks_for_service_when_replies_make_room() {
    let (mut engine, client) = engine_with(|p| p.max_pipeline = 2);
    let get = |k: &str| cmd(&["GET", k]);
    let input = [get("a"), get("b"), get("c")].concat();
    let used = engine.handle_input(client, &input, 0);
    assert_eq!(used, 2 * get("a").len(), "two requests fill the pipeline");
    assert!(!engine.wants_input(client));
    let Some(Action::Connect { tag: backend, .. }) = engine.poll_action() else {
        panic!("a connection to the server first");
    };
    engine.bind(backend, 100);
    engine.handle_connected(backend, 0);
    assert_eq!(actions(&mut engine), vec![Action::Send(100)]);
    let n = engine.output(backend).len();
    engine.output_acked(backend, n);
    // The server answers: the pipeline drains, and the runtime is asked
    // to service the client (its replies, and its held-back input).
    let replies = b"$1\r\nA\r\n$-1\r\n";
    assert_eq!(engine.handle_input(backend, replies, 0), replies.len());
    assert!(engine.wants_input(client));
    assert_eq!(actions(&mut engine), vec![Action::Send(1)]);
    assert_eq!(engine.output(client), b"$1\r\nA\r\n$-1\r\n");
}

#[test]
fn a_wake_without_output_still_asks_for_service() {
    // memcached noreply requests leave no output: the wake-up alone
    // must bring the runtime back to the held input.
    let mut pool = spec(1);
    pool.protocol = Protocol::Memcache;
    pool.max_pipeline = 1;
    let mut engine = Engine::new(vec![pool], 1);
    let client = engine.accept(0, 1).expect("room");
    let input = b"set a 0 0 1 noreply\r\nx\r\nset b 0 0 1 noreply\r\ny\r\n";
    let used = engine.handle_input(client, input, 0);
    assert_eq!(used, 24, "one request fills the pipeline");
    let Some(Action::Connect { tag: backend, .. }) = engine.poll_action() else {
        panic!("a connection to the server first");
    };
    engine.bind(backend, 100);
    engine.handle_connected(backend, 0);
    let _ = actions(&mut engine);
    let n = engine.output(backend).len();
    engine.output_acked(backend, n);
    assert_eq!(engine.handle_input(backend, b"STORED\r\n", 0), 8);
    assert!(engine.output(client).is_empty(), "noreply: nothing to say");
    assert_eq!(actions(&mut engine), vec![Action::Send(1)]);
    assert_eq!(engine.handle_input(client, &input[used..], 0), 24);
}
