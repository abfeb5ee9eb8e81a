//! Throughput of the bulk path for a 100 MB model delta, next to a plain memcpy of the same bytes:
//! tensor encode/decode, frame encode/decode, and sign + verify (BLAKE3 of the payload, ed25519 of
//! the digest). Run with `cargo bench -p fedmesh-protocol`.

use fedmesh_protocol::codec;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId};
use fedmesh_protocol::message::{ModelDelta, Request, TrainMetrics};
use fedmesh_protocol::tensor::{self, PayloadRef, TensorEncoding};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PARAMS: usize = 25_000_000;
const BYTES: usize = PARAMS * 4;
const RUNS: usize = 5;

/// The fastest of `RUNS` runs of `work`.
fn best<T>(mut work: impl FnMut() -> T) -> Duration {
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(work());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn report(what: &str, time: Duration, memcpy: Duration) {
    let rate = BYTES as f64 / time.as_secs_f64() / 1e9;
    let ratio = memcpy.as_secs_f64() / time.as_secs_f64();
    println!(
        "{what:<44} {:>8.2} ms {rate:>7.2} GB/s  {ratio:>5.2}x memcpy",
        time.as_secs_f64() * 1e3
    );
}

fn main() {
    let values: Vec<f32> = (0..PARAMS).map(|i| (i as f32 * 1e-3).sin()).collect();
    let source = vec![7u8; BYTES];
    let mut target = vec![0u8; BYTES];
    let memcpy = best(|| {
        black_box(&mut target).copy_from_slice(black_box(&source));
        target[BYTES / 2]
    });
    println!("100 MB delta ({PARAMS} f32 parameters), best of {RUNS} runs");
    report("memcpy into an existing buffer", memcpy, memcpy);
    report("memcpy into a new Vec (to_vec)", best(|| black_box(&source).to_vec()), memcpy);

    let payload = tensor::encode_params(&values, TensorEncoding::F32Le, None).unwrap();
    let encode = || tensor::encode_params(&values, TensorEncoding::F32Le, None);
    report("tensor encode, new Vec", best(encode), memcpy);
    let mut bytes = Vec::new();
    let encode_into =
        || tensor::encode_params_into(&values, TensorEncoding::F32Le, None, &mut bytes);
    report("tensor encode, reused buffer", best(encode_into), memcpy);
    let decode = || tensor::decode_params(&payload, TensorEncoding::F32Le, PARAMS);
    report("tensor decode + finite check, new Vec", best(decode), memcpy);
    let mut decoded = Vec::new();
    let decode_into =
        || tensor::decode_params_into(&payload, TensorEncoding::F32Le, PARAMS, &mut decoded);
    report("tensor decode + finite check, reused buffer", best(decode_into), memcpy);

    let identity = Identity::from_seed([1; 32]);
    let delta = |payload: &[u8]| ModelDelta {
        job: JobId(ContentHash::of(b"job")),
        round: 1,
        base_model: ContentHash::of(b"model"),
        member: identity.member_id(),
        samples: 600,
        metrics: TrainMetrics { loss: 0.3, accuracy: Some(0.9) },
        payload: PayloadRef::describe(payload, TensorEncoding::F32Le, PARAMS),
    };
    let sign = best(|| Signed::sign(&identity, delta(&payload)));
    report("sign (hash payload + sign digest)", sign, memcpy);
    let signed = Signed::sign(&identity, delta(&payload)).unwrap();
    let verify = best(|| signed.clone().verify_with_payload(&payload, |_, _| Ok(())).unwrap());
    report("verify (signature + payload hash)", verify, memcpy);
    report("sign + verify", sign + verify, memcpy);

    let request = Request::Delta(signed);
    report(
        "frame encode, one Vec (payload copied)",
        best(|| codec::encode_request(&request, &payload)),
        memcpy,
    );
    let header = || codec::encode_request_header(&request, payload.len());
    report("frame encode, header beside payload (no copy)", best(header), memcpy);
    let frame = codec::encode_request(&request, &payload).unwrap();
    let frames: Vec<Vec<u8>> = (0..RUNS).map(|_| frame.clone()).collect();
    let mut frames = frames.into_iter();
    let decode = best(|| frames.next().map(|frame| codec::decode_request(frame).unwrap()));
    report("frame decode (payload stays in the frame)", decode, memcpy);
    let frames: Vec<Vec<u8>> = (0..RUNS).map(|_| frame.clone()).collect();
    let mut frames = frames.into_iter();
    let owned =
        best(|| frames.next().map(|frame| codec::decode_request(frame).unwrap().1.into_vec()));
    report("frame decode + payload into its own Vec", owned, memcpy);
}
