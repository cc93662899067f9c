//! The floor: the least a client process can do to get one answer from sessiond. Starts,
//! connects to the socket given as its argument, writes `hello` and one `ping` in a single
//! write, reads the `welcome` and the answer, and exits. Whole-process figures are reported
//! as multiples of this program's time, so what remains is sessionctl's own cost.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use sessiond_proto::envelope::{Hello, Request};
use sessiond_proto::{frame, PROTOCOL_VERSION};

fn main() -> ExitCode {
    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: sessiond-floor SOCKET");
        return ExitCode::from(2);
    };
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("sessiond-floor: connect: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = frame::encode(&Hello::new(PROTOCOL_VERSION, "floor", None)).expect("encode");
    frame::encode_into(&mut out, &Request::new(1, "ping", serde_json::json!({}))).expect("encode");
    if stream.write_all(&out).is_err() {
        return ExitCode::FAILURE;
    }
    for _ in 0..2 {
        match frame::read_frame(&mut stream, 1 << 20) {
            Ok(Some(_)) => {}
            _ => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}
