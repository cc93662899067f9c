//! Bytes as the daemon reads them from a client: cut into frames under a limit, each head
//! decoded, then decoded as a hello and as every method's params. Nothing may panic, and no
//! frame may be buffered past the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiond_proto::envelope::{FrameHead, Hello, RequestParams};
use sessiond_proto::frame;
use sessiond_proto::methods::*;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    while let Ok(Some(payload)) = frame::read_frame(&mut cursor, LIMIT) {
        assert!(payload.len() <= LIMIT);
        if FrameHead::decode(&payload).is_err() {
            let _ = FrameHead::salvage_id(&payload);
            continue;
        }
        let _ = frame::decode::<Hello>(&payload);
        macro_rules! params {
            ($($p:ty),* $(,)?) => { $( let _ = frame::decode::<RequestParams<$p>>(&payload); )* };
        }
        params!(
            PingParams,
            StatusParams,
            SetLogLevelParams,
            ShutdownParams,
            CreateParams,
            ListParams,
            SessionParams,
            ContextParams,
            RenameParams,
            SubscribeParams,
            UnsubscribeParams,
            SubmitParams,
            SteerParams,
            TurnParams,
            LogParams,
            AttachParams,
        );
    }
});
