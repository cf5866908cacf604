//! Prints the server each key goes to, as the router places it:
//!
//!     cargo run -p ferrox-route --example place -- HASH DISTRIBUTION "IP:PORT:WEIGHT" ... -- KEY ...
//!
//! One line per key: `key<TAB>server`. Tests use it to check that keys
//! sit on the backends the router names (the VM testbed, for one).

use ferrox_route::{Distribution, HashFn, Server, Table};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: place HASH DISTRIBUTION SERVER... -- KEY...";
    let split = args.iter().position(|a| a == "--").expect(usage);
    let (spec, keys) = (&args[..split], &args[split + 1..]);
    assert!(spec.len() >= 3, "{usage}");
    let hash = HashFn::from_name(&spec[0]).expect("a twemproxy hash name");
    let distribution = Distribution::from_name(&spec[1]).expect("a distribution name");
    let servers: Vec<Server> = spec[2..]
        .iter()
        .map(|s| Server::parse(s).expect("a host:port:weight [name] server"))
        .collect();
    let live = vec![true; servers.len()];
    let table = Table::build(hash, distribution, None, &servers, &live).expect("a route table");
    for key in keys {
        let server = table.server_for(key.as_bytes(), 0).expect("a live server");
        let addr = spec[2 + server].split(' ').next().unwrap_or_default();
        let addr = addr.rsplit_once(':').map_or(addr, |(a, _)| a);
        println!("{key}\t{addr}");
    }
}
