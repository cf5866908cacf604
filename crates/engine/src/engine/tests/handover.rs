//! Drain, export and import for a hot handover: no request is taken while
//! draining, requests in flight finish or fail (never replay), and a
//! session's state survives the move.

use super::*;
use crate::engine::handover::Carried;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

#[test]
fn a_draining_engine_takes_no_request_and_finishes_those_in_flight() {
    let mut net = Net::new(spec(2));
    let c = net.client();
    let tag = net.client_tag(c);
    net.servers[0].hold = true;
    net.servers[1].hold = true;
    net.send(c, &cmd(&["SET", "a", "1"]));
    assert!(!net.engine.drained());
    net.engine.begin_drain();
    assert!(!net.engine.wants_input(tag));
    assert_eq!(net.engine.handle_input(tag, PING, net.now), 0, "held back");
    net.servers[0].hold = false;
    net.servers[1].hold = false;
    net.pump();
    assert_eq!(net.take(c), b"+OK\r\n");
    assert!(net.engine.drained());
    // Called off: input is taken again.
    net.engine.end_drain();
    assert!(net.engine.wants_input(tag));
    net.send(c, PING);
    assert_eq!(net.take(c), b"+PONG\r\n");
}

#[test]
fn a_request_still_in_flight_fails_with_the_usual_error_when_its_backend_is_reset() {
    let (mut net, c) = muted(spec(2), 1);
    net.send(c, &cmd(&["GET", "a"]));
    net.engine.begin_drain();
    assert!(!net.engine.drained());
    // The freeze resets every backend connection.
    let backends: Vec<(Handle, Tag)> = net
        .conns
        .iter()
        .filter_map(|(h, conn)| match conn {
            Conn::Backend { tag, .. } => Some((*h, *tag)),
            _ => None,
        })
        .collect();
    for (handle, tag) in backends {
        net.conns.remove(&handle);
        net.engine.handle_gone(tag, handle, net.now);
    }
    net.pump();
    let reply = String::from_utf8(net.take(c)).unwrap();
    assert!(reply.starts_with("-ERR ferrox: server s1"), "{reply}");
    assert!(net.engine.drained());
    assert_eq!(net.servers[1].log, ["GET"], "sent once, never replayed");
}

#[test]
fn export_and_import_keep_the_session_and_what_it_owes() {
    let authed_spec = || {
        let mut pool = spec(1);
        pool.auth = Some(b"secret".to_vec());
        pool
    };
    let mut old = Engine::new(vec![authed_spec()], 1);
    let tag = old.accept(0, 1).unwrap();
    let hello = [cmd(&["AUTH", "secret"]), cmd(&["HELLO", "3"])].concat();
    assert_eq!(old.handle_input(tag, &hello, 0), hello.len());
    let owed = old.output(tag).to_vec();
    assert!(owed.starts_with(b"+OK\r\n"), "{owed:?}");
    old.handle_peer_closed(tag, 0);
    let carried = old.export_session(tag).expect("a live session");
    assert_eq!(
        (
            carried.pool,
            carried.resp3,
            carried.authed,
            carried.peer_closed
        ),
        (0, true, true, true)
    );
    assert_eq!(old.export_session(tag), None, "freed by the export");

    let mut new = Engine::new(vec![authed_spec()], 2);
    let tag = new.import_session(9, carried, &owed).unwrap();
    assert_eq!(new.output(tag), &owed[..]);
    // The peer had closed: it is closed once the owed output is sent.
    let actions: Vec<Action> = std::iter::from_fn(|| new.poll_action()).collect();
    assert!(actions.contains(&Action::Close(9)), "{actions:?}");
    assert!(!new.wants_input(tag));
}

#[test]
fn an_imported_session_goes_on_authenticated_in_resp3() {
    let mut pool = spec(1);
    pool.auth = Some(b"secret".to_vec());
    let carried = Carried {
        pool: 0,
        resp3: true,
        authed: true,
        user: None,
        peer_closed: false,
        closing: false,
    };
    let mut engine = Engine::new(vec![pool], 3);
    let tag = engine.import_session(4, carried, b"").unwrap();
    assert_eq!(engine.handle_input(tag, PING, 0), PING.len());
    assert_eq!(
        engine.output(tag),
        b"+PONG\r\n",
        "no NOAUTH: it had authenticated"
    );
    let missing = Carried { pool: 5, ..carried };
    assert_eq!(engine.import_session(5, missing, b""), None);
}

#[test]
fn an_imported_session_keeps_its_users_permissions() {
    let mut pool = spec(1);
    pool.users = vec![crate::UserSpec {
        name: "reader".into(),
        passwords: vec![b"pw".to_vec()],
        acl: Box::new(crate::acl::Acl::compile("+@read allkeys").unwrap()),
    }];
    let carried = Carried {
        pool: 0,
        resp3: false,
        authed: true,
        user: Some(0),
        peer_closed: false,
        closing: false,
    };
    let mut engine = Engine::new(vec![pool], 3);
    let tag = engine.import_session(4, carried, b"").unwrap();
    let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
    assert_eq!(engine.handle_input(tag, set, 0), set.len());
    assert_eq!(
        engine.output(tag),
        b"-NOPERM this user has no permissions to run the 'set' command\r\n"
    );
    assert_eq!(engine.export_session(tag).unwrap().user, Some(0));
}
