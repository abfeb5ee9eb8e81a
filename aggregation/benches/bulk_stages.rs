//! What each stage of the bulk path costs for one 200 MB delta (50M f32 parameters), as the
//! aggregator meets it: hash, verify, decode, fold and write; beside the machine's own references
//! measured in the same run (memcpy, BLAKE3 on one core, ChaCha20-Poly1305 in Noise-sized frames),
//! each as a share of memcpy's throughput. Run with `cargo bench -p fedmesh-aggregation --bench
//! bulk_stages`.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use fedmesh_aggregation::PartialAggregate;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId};
use fedmesh_protocol::message::{ModelDelta, TrainMetrics};
use fedmesh_protocol::tensor::{self, Decoder, PayloadRef, TensorEncoding};
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

const PARAMS: usize = 50_000_000;
const BYTES: usize = PARAMS * 4;
/// A Noise transport message's largest plaintext.
const NOISE_FRAME: usize = 65_535 - 16;
const RUNS: usize = 3;

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

/// Prints a stage's time, its throughput over the delta's bytes, and its share of memcpy's.
fn report(stage: &str, time: Duration, memcpy: Duration) {
    let rate = BYTES as f64 / time.as_secs_f64() / 1e9;
    let share = memcpy.as_secs_f64() / time.as_secs_f64();
    println!(
        "{stage:<52} {:>8.1} ms {rate:>7.2} GB/s {share:>7.2}x memcpy",
        time.as_secs_f64() * 1e3
    );
}

fn main() -> std::io::Result<()> {
    let values: Vec<f32> = (0..PARAMS).map(|i| (i as f32 * 1e-3).sin() * 1e-2).collect();
    let payload = tensor::encode_params(&values, TensorEncoding::F32Le, None)
        .map_err(std::io::Error::other)?;
    println!(
        "one delta of {PARAMS} f32 parameters ({} MB), best of {RUNS} runs",
        BYTES / 1_000_000
    );

    println!("references:");
    let mut target = vec![0u8; BYTES];
    let memcpy = best(|| target.copy_from_slice(black_box(&payload)));
    report("memcpy into an existing buffer", memcpy, memcpy);
    report("BLAKE3, one core", best(|| blake3::hash(black_box(&payload))), memcpy);
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let seal = best(|| {
        for (counter, frame) in target.chunks_mut(NOISE_FRAME).enumerate() {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(counter as u64).to_le_bytes());
            black_box(cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", frame))
                .map_err(|_| std::io::Error::other("sealing failed"))?;
        }
        Ok::<_, std::io::Error>(())
    });
    report("ChaCha20-Poly1305 (RustCrypto), 64 KiB frames", seal, memcpy);

    println!("stages at the aggregator:");
    report("frame buffer: a new Vec of the received bytes", best(|| payload.to_vec()), memcpy);
    report("hash the payload (ContentHash)", best(|| ContentHash::of(&payload)), memcpy);
    let identity = Identity::from_seed([1; 32]);
    let signed =
        Signed::sign(&identity, delta(&identity, &payload)).map_err(std::io::Error::other)?;
    let verify = best(|| signed.clone().verify_with_payload(&payload, |_, _| Ok(())).is_ok());
    report("verify (signature, payload hashed again)", verify, memcpy);
    let decode = || tensor::decode_params(&payload, TensorEncoding::F32Le, PARAMS);
    report("decode into a new Vec<f32> (what the node does)", best(decode), memcpy);
    let fold_decoded = best(|| {
        let mut sum = PartialAggregate::new(PARAMS);
        sum.add("m", 1.0, &values).is_ok()
    });
    report("fold a decoded delta into a new f64 sum", fold_decoded, memcpy);
    let decoder =
        Decoder::new(&payload, TensorEncoding::F32Le, PARAMS).map_err(std::io::Error::other)?;
    let fold_encoded = best(|| {
        let mut sum = PartialAggregate::new(PARAMS);
        sum.add_decoded("m", 1.0, &decoder).is_ok()
    });
    report("fold the encoded delta, no decoded copy", fold_encoded, memcpy);
    // A round's second and later deltas meet a sum whose pages are already in memory.
    let mut sum = PartialAggregate::new(PARAMS);
    let mut contributor = 0;
    let fold_again = best(|| {
        contributor += 1;
        sum.add_decoded(&format!("m{contributor}"), 1.0, &decoder).is_ok()
    });
    report("  the same, into a sum already in memory", fold_again, memcpy);
    let folder = tempfile::tempdir()?;
    let write = best(|| {
        let mut file = std::fs::File::create(folder.path().join("model"))?;
        file.write_all(&payload)?;
        file.sync_all()
    });
    report("write the model to a file and fsync it", write, memcpy);
    Ok(())
}

/// A delta of `payload` signed by `identity`, as a trainer sends it.
fn delta(identity: &Identity, payload: &[u8]) -> ModelDelta {
    ModelDelta {
        job: JobId(ContentHash::of(b"job")),
        round: 1,
        base_model: ContentHash::of(b"model"),
        member: identity.member_id(),
        samples: 600,
        metrics: TrainMetrics { loss: 0.3, accuracy: Some(0.9) },
        payload: PayloadRef::describe(payload, TensorEncoding::F32Le, PARAMS),
    }
}
