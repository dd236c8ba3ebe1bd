//! Password hashing (argon2id) on a small fixed pool of threads.
//!
//! One argon2 run with the default parameters takes 19 MiB and tens of
//! milliseconds of a core. Run on tokio's blocking pool without a bound, a
//! storm of logins started hundreds at once (7.5 GB seen) and glibc kept
//! most of it afterwards (one malloc arena per thread). Here at most
//! `threads` hashes run at once, on the same few threads (so their memory
//! is reused), at most as many more wait, and the rest are refused at once
//! with 503 and `Retry-After`: a client retries, the server stays up.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{
    self, PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Seconds a client refused for a busy pool is told to wait.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Why a password could not be hashed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Every place in the pool is taken: retry after this many seconds
    /// (503 with `Retry-After`).
    #[error("the server is busy checking passwords; retry in {0} s")]
    Busy(u64),
    /// The pool or argon2 failed (a server fault).
    #[error("{0}")]
    Failed(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing pool; cheap to clone. Its threads end when the last clone
/// is dropped.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    jobs: mpsc::SyncSender<Job>,
    /// Running plus waiting hashes.
    slots: Arc<Semaphore>,
    threads: usize,
}

/// A place in the pool, taken before any other work of a request that
/// will hash (so that a refused request has consumed nothing, e.g. no
/// login attempt).
#[derive(Debug)]
pub struct HashSlot {
    hasher: PasswordHasher,
    /// Shared with the jobs: a request that goes away while its hash runs
    /// keeps its place until the hash is done.
    permit: Arc<OwnedSemaphorePermit>,
}

impl PasswordHasher {
    /// A pool of `threads` hashing threads (at least one); as many more
    /// requests may wait for one.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let slots = threads * 2;
        let (tx, rx) = mpsc::sync_channel::<Job>(slots);
        let rx = Arc::new(Mutex::new(rx));
        for k in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vela-hash-{k}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        PasswordHasher {
            jobs: tx,
            slots: Arc::new(Semaphore::new(slots)),
            threads,
        }
    }

    /// How many hashes may run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Takes a place in the pool, or refuses at once with 503 when every
    /// place is taken.
    pub fn reserve(&self) -> Result<HashSlot, PasswordError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(HashSlot {
                hasher: self.clone(),
                permit: Arc::new(permit),
            }),
            Err(_) => {
                tracing::warn!("password hashing pool busy: request refused");
                Err(PasswordError::Busy(BUSY_RETRY_AFTER_SECS))
            }
        }
    }

    /// Runs `f` on a pool thread, holding `permit` until it is done.
    async fn run<T: Send + 'static>(
        &self,
        permit: Arc<OwnedSemaphorePermit>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = f();
            // The place is free before the request learns the result, so
            // that its next request finds it free.
            drop(permit);
            let _ = reply.send(out);
        });
        // The queue holds as many jobs as there are slots: never full.
        self.jobs
            .try_send(job)
            .map_err(|e| PasswordError::Failed(format!("password hashing queue: {e}")))?;
        rx.await
            .map_err(|_| PasswordError::Failed("password hashing thread failed".to_owned()))
    }
}

impl HashSlot {
    /// Hashes a password with argon2id (default parameters, random salt).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.hasher
            .run(self.permit.clone(), move || hash_now(password.as_bytes()))
            .await?
    }

    /// Checks `password` against `hash`, or against a dummy hash when
    /// `None` (always false), so that an unknown username takes as long as
    /// a wrong password.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.hasher
            .run(self.permit.clone(), move || {
                verify_now(password.as_bytes(), hash.as_deref())
            })
            .await
    }
}

/// Argon2's working memory is allocated larger than glibc's largest mmap
/// threshold (32 MiB on 64-bit, mallopt(3)), so that each hash maps its own
/// memory and unmaps it when done. At 19 MiB it came from the threads' malloc
/// arenas instead (glibc raises the threshold past a freed mapping's size),
/// which kept it: 176 MB resident 30 s after a storm of 400 logins on a
/// 4-thread pool, 23.5 MB this way (18 MB before the storm; RELIABILITY.md). The pages past those argon2 uses
/// are never touched, so they cost no memory.
const MAPPED_BYTES: usize = 34 * 1024 * 1024;

/// argon2 (the `argon2` crate) with its memory allocated as above; hashes
/// and verifies exactly as `Argon2` does.
struct MappedArgon2;

impl password_hash::PasswordHasher for MappedArgon2 {
    type Params = Params;

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        alg_id: Option<password_hash::Ident<'a>>,
        version: Option<password_hash::Decimal>,
        params: Params,
        salt: impl Into<password_hash::Salt<'a>>,
    ) -> password_hash::Result<PasswordHash<'a>> {
        let algorithm = alg_id
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = salt.into();
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buf)?;
        let blocks = params.block_count();
        let mut memory: Vec<Block> =
            Vec::with_capacity(blocks.max(MAPPED_BYTES / std::mem::size_of::<Block>()));
        memory.resize(blocks, Block::default());
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let output =
            password_hash::Output::init_with(
                params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN),
                |out| {
                    Ok(argon2.hash_password_into_with_memory(
                        password,
                        salt_bytes,
                        out,
                        &mut memory,
                    )?)
                },
            )?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: password_hash::ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| PasswordError::Failed(format!("no randomness: {e}")))?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| PasswordError::Failed(format!("salt: {e}")))?;
    MappedArgon2
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Failed(format!("password hashing failed: {e}")))
}

/// A hash that no password matches in practice, computed once.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::encode_b64(b"vela-dummy-salt!").expect("a 16-byte salt encodes");
        MappedArgon2
            .hash_password(b"not-a-password-anyone-has", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

fn verify_now(password: &[u8], hash: Option<&str>) -> bool {
    let known = hash.is_some();
    let Ok(parsed) = PasswordHash::new(hash.unwrap_or_else(|| dummy_hash())) else {
        return false;
    };
    MappedArgon2.verify_password(password, &parsed).is_ok() && known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2id_hashes_verify() {
        let pool = PasswordHasher::new(1);
        let h = pool
            .reserve()
            .expect("slot")
            .hash("correct horse".into())
            .await
            .expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        let verify = |pw: &str, h: Option<String>| {
            let slot = pool.reserve().expect("slot");
            let pw = pw.to_owned();
            async move { slot.verify(pw, h).await.expect("verify") }
        };
        assert!(verify("correct horse", Some(h.clone())).await);
        assert!(!verify("wrong horse", Some(h)).await);
        assert!(!verify("not-a-password-anyone-has", None).await);
    }

    #[test]
    fn hashes_are_those_of_the_argon2_crate() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let ours = MappedArgon2
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        assert_eq!(ours, theirs);
        // Hashes made by the crate itself (stored before) still verify.
        assert!(verify_now(b"correct horse", Some(&theirs)));
        assert!(!verify_now(b"correct horsE", Some(&theirs)));
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once_with_retry_after() {
        let pool = PasswordHasher::new(2);
        // Two running plus two waiting.
        let held: Vec<HashSlot> = (0..4).map(|_| pool.reserve().expect("slot")).collect();
        let e = pool.reserve().expect_err("a fifth is refused");
        assert_eq!(e, PasswordError::Busy(BUSY_RETRY_AFTER_SECS));
        drop(held);
        assert!(pool.reserve().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_hashes_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = PasswordHasher::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let slot = pool.reserve().expect("slot");
            let (running, most) = (running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                slot.hasher
                    .run(slot.permit.clone(), move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("ran");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
