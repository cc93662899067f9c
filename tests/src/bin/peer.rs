//! `sessiond-test-peer SOCKET`: connects to a socket, sends hello and a ping, and prints the
//! first frame it gets back as JSON. The peer-uid test runs it under another uid, where the
//! real client would refuse the foreign runtime directory before ever connecting.

use std::io::Write;
use std::os::unix::net::UnixStream;

use sessiond_proto::envelope::{Hello, Request};
use sessiond_proto::methods::PingParams;
use sessiond_proto::{frame, PROTOCOL_VERSION};

fn main() {
    let socket = std::env::args()
        .nth(1)
        .expect("usage: sessiond-test-peer SOCKET");
    let mut stream = UnixStream::connect(&socket).expect("connect");
    let mut bytes = frame::encode(&Hello::new(PROTOCOL_VERSION, "peer", None)).unwrap();
    frame::encode_into(&mut bytes, &Request::new(1, "ping", PingParams {})).unwrap();
    // The daemon may refuse and close before reading; its answer is what we want either way.
    let _ = stream.write_all(&bytes);
    let payload = frame::read_frame(&mut stream, 1 << 20)
        .expect("read")
        .expect("a frame before close");
    println!("{}", sessiond_tests::as_json(&payload));
}
