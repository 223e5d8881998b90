//! The text under the results table of `docs/benchmarks.md`: how to reproduce the run, and one
//! note per row that misses its target or stays "report". Edit the notes here (never in
//! `docs/benchmarks.md`, which `cargo xtask bench` rewrites); the results themselves are in the
//! table, so a note explains a row without quoting its numbers.

/// The paragraph after the table: how to reproduce the run, and how long it takes.
pub(super) const REPRODUCE: &str = "Reproduce with `cargo xtask bench` (about 20 minutes on 2 cores; \
it provisions a SoftHSM2 token for the PKCS#11 rows, an OpenBao dev server for the Vault rows, a \
moto server for the AWS KMS rows and the Key Vault test server for the Azure row, builds the \
1,000,000-key store once under `target/bench-data/`, a fresh 1,000,000-TEK store for the \
rotation row and a fresh 100,000-TEK store for the backup rows in every run). \
`cargo xtask bench --report` rewrites this file from \
the last results without running anything; the rows measured by the `harness = false` \
benchmarks (the cache hits, the 8 KiB page seals against their fixed-nonce baseline, the \
facade's sealer, the 1,000,000-TEK rotation and the backup rows) come from \
`target/bench-extra/*.json`.";

/// The notes, one list item each, in the order of the table.
pub(super) const NOTES: &[&str] = &[
    "**Page seal.** Nonces are deterministic, the construction of NIST SP 800-38D section 8.2.1: \
     a 64-bit salt drawn from the operating system once per reserved block of invocations (and \
     again in a forked child), followed by a 32-bit invocation number from the block the key \
     store reserved durably before the first seal (`docs/formats/page.md` gives the uniqueness \
     argument). A seal makes no system call. What remains over the raw seal with a fixed nonce \
     is one atomic compare-and-swap on the invocation counter, the 17-byte page header and one \
     more GHASH block for the header in the associated data; it is constant per page, so it \
     fades at larger pages. The rows \"page seal vs OS-random nonce\" compare with a raw seal \
     that draws its nonce with one `getrandom` call per page, as every seal did before: the \
     cost this design removes. Opening draws no nonce. The three 8 KiB rows with a target are \
     measured interleaved (`benches/benches/page_seal_8k.rs`: ours and the raw seal in \
     alternating chunks of about 10 ms, ABBA order, the median of each side's chunks, about \
     3 s per side), because criterion runs one after the other and a drift of the shared \
     machine between the two runs moved the ratio by several percent, more than the margin \
     the 1.05× target leaves; the other sizes and the OS-random-nonce baseline are criterion's.",
    "**Cache hit on 1, 2 and 4 threads.** Ours and the `HashMap` baseline run in alternating \
     chunks of about 10 ms in one harness (`benches/benches/key_cache_hit.rs`, ABBA order, the \
     median of each side's chunks), so background noise on this shared 2-core machine hits \
     both alike; criterion is not used because it runs one function after the other. The hit \
     path is a per-thread front cache of weak references in front of quick_cache, which stays \
     the authority for the bound, eviction, zeroization on eviction and single flight on a \
     miss: a hit takes no lock and writes only the key's reference count (as the baseline's \
     `Arc` clone does) and a per-thread counter. At 4 threads on 2 cores the threads preempt \
     each other on both sides, and even the baseline slows from 1 to 2 threads.",
    "**Seal 8 KiB through the facade's sealer.** This is the whole per-page cost a database \
     pays: `TdeSubsystem::page_sealer` returns a handle that holds its table's current \
     encryptor, so a page seal does no table lookup and no allocation; each iteration polls \
     `PageSealer::seal_in_place` once with a no-op waker (a poll that returns `Pending`, \
     waiting for a block reservation, is finished with `block_on` and counted on the \
     benchmark's standard error). The run crosses block boundaries, so the amortised durable \
     reservation (one redb write transaction with fsync per block of invocations) is included. \
     Ours and the raw aws-lc seal run interleaved in one harness (`benches/benches/sealer.rs`, \
     chunks of about 10 ms in ABBA order, the median of each side's chunks), because the \
     1.08× target is within the drift criterion's one-after-the-other runs showed on this \
     shared machine.",
    "**get_table_key miss with an audit log, and one audit record** (report). Every miss that \
     reaches the provider appends one `tek.unwrapped` line: the event is formatted with the \
     writer's process facts, chained (HMAC-SHA256 under the audit key, then SHA-256 over the \
     previous hash and the line; the benchmark's sinks are keyed, as a started subsystem's \
     is) and written with one `write(2)` under an exclusive `flock` of the log's lock file, \
     after a `stat` that notices another process's rotation. With `audit_fsync = \"batched\"` (the default) that \
     is all the miss pays: the line is in the page cache at once, so a killed process loses \
     nothing, and a group commit fsyncs the pending lines at most 100 ms later (and before any \
     record that changes key state, which is always fsynced before its operation returns). \
     With `always`, every miss also waits for an fsync of the log, which on this virtual \
     machine's disk costs far more than the miss itself; that is what the `always` rows and \
     the record row's baseline show. Choose `always` only where losing the last 100 ms of \
     unwrap records in a power loss is not acceptable.",
    "**KeyBytes allocate + free, locked arena** (report; `benches/benches/key_bytes.rs`). \
     Every key HeliosDB holds lives in a 32-byte slot of the locked key arena \
     (`heliosdb_tde_core::memory`): pages mapped once, locked in RAM, left out of core dumps \
     and wiped in a forked child, never unmapped. Both sides copy the same constant 32 bytes \
     in (`KeyBytes::generate` would measure `getrandom`) and zeroize them before the free. \
     Ours takes a slot from the arena's free list under one process-wide mutex and puts it \
     back on drop; once the first page is mapped and locked (before the measurement) it makes \
     no system call. The baseline is a `Box<[u8; 32]>` from the global allocator, whose \
     per-thread cache needs no lock. A key is allocated when it is generated, unwrapped or \
     loaded into the cache, never per page seal, so this cost belongs to a cache miss, not to \
     a hit. The cache-miss rows did not regress with the arena: on 2026-12-03 the commit \
     before it (55cec40, keys in a `Box`) measured 4.10 and 4.28 us (memory provider) and 4.18 \
     and 4.24 us (file provider) in two runs, and the arena 4.07 and 4.05 us, minutes apart on \
     the same machine. That machine was slower than the one of the carried-over rows: the raw \
     AES-GCM open baseline took 149 ns against 74 ns before, which is why the miss rows' \
     absolute times rose from about 2.7 us while their ratios fell.",
    "**SoftHSM2 wrap + unwrap: both rows missed.** The provider caches each MEK version's \
     object handle and lifecycle state: its own changes invalidate the entry at once; \
     otherwise it is re-read after `state_refresh` (default 10 s; 0 re-reads on every call) or \
     when the token answers that the handle is invalid or the session is logged out. A \
     steady-state wrap is one hop to a pooled session with `C_EncryptInit`/`C_Encrypt` and the \
     self-check decrypt, an unwrap one hop with one decrypt: no object search, no attribute \
     read, no login check (before this change: two hops per call, three object searches, a \
     record search and an attribute read; 395 µs, 26.85×, on 2026-11-29). What is left has \
     three parts. (1) The token object itself, which sets a floor above the first row's \
     target. The MEK is a token object made with the hardened template (sensitive, not \
     extractable, not copyable), so the provider cannot keep a session copy; deriving one \
     would need `CKA_DERIVE` on the MEK, which would let any holder of the PIN derive key \
     material from it. SoftHSM2's file object store re-reads the object's files on every \
     `C_*Init` of a token object (six object-file opens per wrap + unwrap, counted with strace \
     in the provider and in the raw token-key loop alike, so the provider adds no token work). \
     The token-object floor row measures the wrap's encrypt and the unwrap's decrypt alone on \
     such a key, with no self-check and no hop: 1.92× the same two calls on a session key in \
     this run. A provider with no overhead at all would therefore sit at about 1.9× on the \
     first row, so its 1.5× target cannot be met on SoftHSM2's file store by any change to the \
     provider; only an MEK outside the token's object store could, and that is not done. \
     (2) The wrap self-check: the wrap decrypts the new wrap once more before returning it (a \
     third GCM call), as every provider path that writes a wrapped TEK must. (3) Two hops: \
     each operation runs on a blocking thread under the call timeout (`spawn_blocking` and \
     `timeout_at`), so that a token that stops answering fails the call instead of hanging \
     the caller. The hop row measures one hop at about 10 µs; a bare `spawn_blocking` round \
     trip under the same timeout, outside the provider, took 7.5 to 8.6 µs on this virtual \
     machine, where waking a parked thread and then the waiting task dominate, and more when \
     the threads have slept through a token call. The self-check and the hops are what keep \
     the like-for-like row above 1.5×; dropping either would weaken a guarantee (a wrap that \
     was never read back, or a caller a silent token can hang), and neither is done. A real \
     HSM's own latency (a network round trip for most) dwarfs the hop.",
    "**OpenBao wrap + unwrap** (report): one Transit encrypt and one decrypt over HTTP \
     keep-alive, the same two calls as the raw vaultrs baseline; the provider's lifecycle \
     record comes from its 10-second cache, so the extra cost is the envelope and context \
     handling, well below the round-trip noise.",
    "**moto wrap + unwrap** (report): one `Encrypt` and one `Decrypt`, the same two calls as \
     the raw aws-sdk-kms baseline, with the same key and encryption context. moto itself takes \
     about 3 ms per call (a Python server that closes the connection after every answer, so \
     each call also opens a new TCP connection), which dominates both sides; the ratio shows \
     the provider's own share on top of it (the envelope, the encryption context, the cached \
     version lookup). Real AWS KMS latency is a network round trip, not moto's.",
    "**Key Vault test server wrap + unwrap** (report): one `wrap_key` (RSA-OAEP-256, 3072-bit \
     key) of the 64-byte TEK-and-binding value and one `unwrap_key`, the same two calls as the \
     raw `KeyClient` baseline, with the same key version, HTTP client settings and credential \
     type. The test server's RSA private-key operation (Python `cryptography`) dominates both \
     sides; the ratio shows the provider's own share (the binding hash, the payload, the cached \
     version tags). Real Key Vault latency, and its throttling limits, are not the test \
     server's.",
    "**OpenBao MEK rotation of 10,000 TEKs**: both sides make the same 10,000 Transit rewrap \
     calls with the rotation's concurrency (8 in flight), so the server's work dominates and \
     the rotation's durable store commits hide under the round trips; a ratio below 1.00 is \
     noise of the shared 2-core machine.",
    "**moto MEK rotation of 1,000 TEKs**: both sides make the same 1,000 `ReEncrypt` calls \
     with the rotation's concurrency (8 in flight), v1 to v2; each sample rotates a fresh MEK, \
     set up untimed. The rotation also creates the new version's key, alias and tags, and \
     commits the store. moto's ~3 ms per call, serialised by its Python interpreter, dominates \
     both.",
    "**MEK rotation of 100,000 and 1,000,000 TEKs and the wrap self-check.** Every provider \
     unwraps each new wrap once and compares it before the wrap is stored (the self-check row: \
     one more unwrap and a 32-byte compare per key); each re-wrapped record is authenticated \
     (HMAC-SHA256 under the store integrity key), each journal write is a compare-and-set, and \
     each step first takes the store's write lock, so a durable rotation costs several times \
     the bare unwrap + wrap in memory. The 1,000,000-TEK row is one pass measured by \
     `benches/benches/rotation_1m.rs` (`harness = false`: criterion's ten-sample minimum \
     would take many minutes); its baseline runs the same unwrap + wrap in chunks of 10,000 \
     keys, so the baseline itself never holds a million keys.",
    "**Provider migration of 100,000 TEKs, secure file to secure file.** The migration's pass \
     is the rotation's (`Rotator::rewrap_pass`: pages of TEKs, each page committed with the \
     journal's cursor, the source wrap kept), so the row compares it with the rotation of the \
     same 100,000 TEKs in the same run. The difference is where the TEK goes: a rotation \
     re-wraps inside one provider, a migration unwraps through the source's provider and wraps \
     through the target's (another directory, another MEK), each with its own checks, through \
     the provider set's routing. Between samples the migration is rolled back (not timed), as \
     the rotation's old version is deactivated between its samples. The migration measures \
     below the rotation: a rotation run also creates the new MEK version (an MEK file written \
     and synced, the old version's file rewritten as decrypt-only) and writes the new \
     version's key check value, while the migration's target MEK exists before its first \
     sample; the rest of the difference was not profiled. **Secure file to \
     SoftHSM2, 10,000 TEKs** (report): the baseline is only the 10,000 `C_Encrypt` calls the \
     token must make in any case; ours adds the unwrap through the secure file, the PKCS#11 \
     provider's self-check decrypt of each new wrap (a second token call), its pooled-session \
     hop per call, and the durable page commits.",
    "**Peak memory of the 1,000,000-TEK rotation** (report): the benchmark process writes `5` \
     to `/proc/self/clear_refs` just before the pass, which resets its peak resident set \
     (`VmHWM`) to the current one, and reads `VmHWM` from `/proc/self/status` after it; the \
     baseline is the resident set (`VmRSS`) at the reset, with the store built and the key \
     manager open. The rotation re-wraps in pages of 512 TEKs per store transaction and never \
     loads every TEK at once; the difference of the two is what the pass adds, including the \
     allocator's retained memory and redb's page cache for the transactions it commits.",
    "**Cold start** (report): ours opens the provider, the redb store (`RedbKeyStore::open_dir`) \
     and the key manager, checks the default MEK and unwraps 10,000 TEKs with `get_tek` (the \
     cache holds them all); the baseline makes 10,000 raw unwraps (under an equal master key \
     for the file provider, `C_Decrypt` on a token key for SoftHSM2). The file provider's open \
     is dominated by the Argon2id derivation of the passphrase, a deliberate cost against \
     guessing; the row \"the provider open alone\" shows its share. For SoftHSM2, \
     `C_Initialize` is process-wide and never finalised, so every sample after the first \
     starts warm at the module level (the library is loaded and initialised); a real first \
     start also pays loading the module.",
    "**Backup of 100,000 TEKs and its check with the provider** (`benches/benches/backup.rs`, \
     `harness = false`: one store of 100,000 TEKs is built per run through the key manager on \
     the secure-file provider with its default Argon2id parameters, then each side runs five \
     times, the two sides of a row alternating in ABBA order, and the medians are shown). The \
     backup (`KeyManager::backup`) makes the same walk of the store in one read transaction as \
     its baseline (`KeyStore::export_blocking` with a visitor that only counts); on top of it, \
     it spools every record to a private temporary file while hashing each section, reads the \
     provider's MEK files, copies the spool into the bundle behind the manifest, adds the \
     trailer checksum and syncs the bundle and its directory; the ratio is that write path. \
     The check (`verify_bundle_with_provider`, what `backup verify --with-provider` runs) reads \
     the whole bundle to check its checksums, \
     loads every record into a scratch redb store in memory (each record checked as it is read), counts the MEK versions the records need, \
     writes the bundle's MEK files to a private scratch directory and opens the secure-file \
     provider there (one Argon2id derivation of the passphrase, a deliberate cost against \
     guessing), unwraps the key check value and then every TEK through the provider, each \
     record read back authenticated. Its baseline is the one step no check can skip: 100,000 \
     `unwrap_tek` calls of the same wrapped keys on the secure-file provider already open (its \
     keyring in memory, the MEK's state checked on each call, as in the check); the in-memory \
     provider would leave out that state check, so this is the closest raw cost of the \
     unwraps. The ratio is everything else the check does, of which the Argon2id open is a \
     fixed part whatever the number of keys.",
];
