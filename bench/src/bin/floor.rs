//! The floor: the least a client process can do to get one answer from sessiond. Starts,
//! connects to the socket given as its argument, writes `hello` and one `ping` in a single
//! write, reads the `welcome` and the answer, and exits. Whole-process figures are reported
//! as multiples of this program's time, so what remains is sessionctl's own cost.
//!
//! `sessiond-floor --switch SESSION SOCKET` does the same with a `switch` of the default
//! context in place of the `ping`: the least any client can pay for a durable switch. Beside
//! `sessionctl switch` it shows how much of that figure is the daemon's commit and how much
//! is sessionctl.
//!
//! `sessiond-floor --echo SOCKET` is the floor for the in-process figures instead: a raw
//! socket echo on a single-threaded tokio runtime in its own process, as sessiond is, so a
//! round trip through it pays the same cross-process wake-ups a `ping` does and nothing else.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use sessiond_proto::envelope::{FrameHead, Hello, Request};
use sessiond_proto::{frame, PROTOCOL_VERSION};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new("--echo")) {
        return match args.next() {
            Some(socket) => echo(std::path::Path::new(&socket)),
            None => usage(),
        };
    }
    let (request, socket) = if first.as_deref() == Some(std::ffi::OsStr::new("--switch")) {
        let (Some(session), Some(socket)) = (args.next(), args.next()) else {
            return usage();
        };
        let Some(session) = session.to_str().map(str::to_string) else {
            return usage();
        };
        let params = serde_json::json!({ "session": session });
        (Request::new(1, "switch", params), socket)
    } else {
        let Some(socket) = first else {
            return usage();
        };
        (Request::new(1, "ping", serde_json::json!({})), socket)
    };
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("sessiond-floor: connect: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = frame::encode(&Hello::new(PROTOCOL_VERSION, "floor", None)).expect("encode");
    frame::encode_into(&mut out, &request).expect("encode");
    if stream.write_all(&out).is_err() {
        return ExitCode::FAILURE;
    }
    // The welcome, then the answer, which must be a response: a refused switch would
    // otherwise pass for a fast one.
    let mut last = None;
    for _ in 0..2 {
        match frame::read_frame(&mut stream, 1 << 20) {
            Ok(Some(payload)) => last = Some(payload),
            _ => return ExitCode::FAILURE,
        }
    }
    match last.as_deref().map(FrameHead::decode) {
        Some(Ok(head)) if head.kind == "response" && head.id == Some(1) => ExitCode::SUCCESS,
        _ => {
            eprintln!("sessiond-floor: the daemon did not answer with a response");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: sessiond-floor SOCKET | sessiond-floor --switch SESSION SOCKET \
         | sessiond-floor --echo SOCKET"
    );
    ExitCode::from(2)
}

/// Serves an echo of every byte read on `socket` until killed.
fn echo(socket: &std::path::Path) -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiond-floor: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::UnixListener::bind(socket) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sessiond-floor: bind {}: {e}", socket.display());
                return ExitCode::FAILURE;
            }
        };
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
        ExitCode::FAILURE
    })
}
