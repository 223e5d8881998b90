//! Page nonces across a real `fork`: the child of a process that holds a `TableCipher` draws a
//! new nonce salt before its first seal, so parent and child never share a nonce even though
//! both continue from the same invocation counter.
//!
//! Its own binary (`harness = false`) and single-threaded, because `fork` in a multithreaded
//! process leaves the child with one thread and whatever locks the others held. Each case forks
//! once: the child seals pages, writes its fork generation, salt, nonces and one sealed page to a
//! pipe and leaves with `_exit`; the parent seals as many pages, reads the pipe and checks.
//! Prints `N passed, M failed` and exits non-zero if a case failed.

// fork, waitpid and _exit are unsafe libc calls; tidy scans only `src/`, and the crate's
// library allows unsafe code only in `src/fork.rs`.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    println!("0 passed, 0 failed (fork exists only on unix)");
}

#[cfg(unix)]
mod unix {
    use heliosdb_tde_cipher::{Backend, HEADER_LEN, PageHeader, TableCipher, UsageLimits, testing};
    use heliosdb_tde_core::{EncryptionAlgorithm, KeyBytes, TableKey};
    use std::collections::HashSet;
    use std::io::{Read, Write};

    /// Pages each side seals after the fork.
    const PAGES: usize = 10_000;

    type Case = (&'static str, fn() -> Result<(), String>);

    pub(super) fn main() {
        let cases: [Case; 4] = [
            (
                "reserved_cipher_sealed_before_fork_gets_a_new_salt_in_the_child",
                || reserved(true),
            ),
            ("reserved_cipher_forked_before_its_first_seal", || {
                reserved(false)
            }),
            (
                "unreserved_cipher_sealed_before_fork_gets_a_new_salt_and_base",
                unreserved,
            ),
            (
                "a_page_sealed_in_the_child_opens_in_the_parent",
                child_page_opens_in_parent,
            ),
        ];
        let (mut passed, mut failed) = (0, 0);
        for (name, case) in cases {
            let outcome = std::panic::catch_unwind(case)
                .unwrap_or_else(|_| Err("the case panicked (see above)".into()));
            match outcome {
                Ok(()) => {
                    passed += 1;
                    println!("test {name} ... ok");
                }
                Err(e) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {e}");
                }
            }
        }
        println!("{passed} passed, {failed} failed");
        if failed > 0 {
            std::process::exit(1);
        }
    }

    fn tek() -> TableKey {
        TableKey::new(
            "forked@v1".parse().unwrap(),
            EncryptionAlgorithm::Aes256Gcm,
            KeyBytes::from_slice(&[0x5a; 32]).unwrap(),
        )
    }

    fn reserved_cipher() -> TableCipher {
        TableCipher::with_reservation(
            &tek(),
            Backend::default(),
            UsageLimits::default(),
            1_000..1_000 + 4 * PAGES as u64,
        )
        .unwrap()
    }

    /// Seals `count` in-place pages and returns their nonces.
    fn seal_pages(c: &TableCipher, count: usize) -> Result<Vec<[u8; 12]>, String> {
        let mut page = [0u8; 512];
        (0..count)
            .map(|i| {
                page[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let parts = c
                    .seal_in_place(b"forked/page", &mut page)
                    .map_err(|e| format!("seal {i}: {e}"))?;
                PageHeader::parse(&parts.header)
                    .map(|h| h.nonce)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// What the child reports.
    struct ChildReport {
        generation: u64,
        salt: u64,
        nonces: Vec<[u8; 12]>,
        sealed: Vec<u8>,
    }

    /// Forks; the child runs `child` on `cipher` and reports; the parent runs `parent` and
    /// gets the child's report.
    fn fork_with<T>(
        cipher: &TableCipher,
        child: impl FnOnce(&TableCipher) -> Result<(Vec<[u8; 12]>, Vec<u8>), String>,
        parent: impl FnOnce(&TableCipher) -> Result<T, String>,
    ) -> Result<(T, ChildReport), String> {
        let (mut reader, mut writer) = std::io::pipe().map_err(|e| e.to_string())?;
        std::io::stdout().flush().ok();
        // SAFETY: this process runs one thread (harness = false, no thread is spawned), so the
        // child starts with a consistent heap and no lock held by a vanished thread.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(reader);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (nonces, sealed) = child(cipher)?;
                let mut out = Vec::new();
                out.extend_from_slice(&testing::fork_generation().to_be_bytes());
                out.extend_from_slice(&cipher.nonce_salt().unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&(nonces.len() as u64).to_be_bytes());
                for n in &nonces {
                    out.extend_from_slice(n);
                }
                out.extend_from_slice(&sealed);
                writer.write_all(&out).map_err(|e| e.to_string())
            }));
            let code = match outcome {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("child: {e}");
                    2
                }
                Err(_) => 3,
            };
            // SAFETY: `_exit` ends the child at once, without running the parent's atexit
            // handlers or destructors a second time; nothing else runs after it.
            unsafe { libc::_exit(code) };
        }
        drop(writer);
        let mine = parent(cipher);
        let mut bytes = Vec::new();
        let read = reader.read_to_end(&mut bytes);
        let mut status = 0;
        // SAFETY: `pid` is this process's child, and `status` is a valid `c_int` to write to.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited != pid {
            return Err(format!(
                "waitpid failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(format!("the child failed (wait status {status})"));
        }
        read.map_err(|e| e.to_string())?;
        let mine = mine?;
        let word = |at: usize| -> Result<u64, String> {
            let b = bytes.get(at..at + 8).ok_or("the child's report is short")?;
            Ok(u64::from_be_bytes(b.try_into().unwrap()))
        };
        let (generation, salt, count) = (word(0)?, word(8)?, word(16)? as usize);
        let body = &bytes[24..];
        if body.len() < count * 12 {
            return Err("the child's report is short".into());
        }
        let nonces = body[..count * 12]
            .chunks_exact(12)
            .map(|c| c.try_into().unwrap())
            .collect();
        let sealed = body[count * 12..].to_vec();
        Ok((
            mine,
            ChildReport {
                generation,
                salt,
                nonces,
                sealed,
            },
        ))
    }

    fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
        if cond { Ok(()) } else { Err(what()) }
    }

    fn salt_of(n: &[u8; 12]) -> u64 {
        u64::from_be_bytes(n[..8].try_into().unwrap())
    }

    fn number_of(n: &[u8; 12]) -> u32 {
        u32::from_be_bytes(n[8..].try_into().unwrap())
    }

    /// Parent and child nonces are disjoint, each side uses one salt, and the salts differ.
    fn check_disjoint(
        before: &[[u8; 12]],
        parent: &[[u8; 12]],
        child: &ChildReport,
    ) -> Result<(), String> {
        check(child.nonces.len() == PAGES, || {
            format!("the child sealed {} pages", child.nonces.len())
        })?;
        let ours: HashSet<_> = before.iter().chain(parent).copied().collect();
        check(ours.len() == before.len() + parent.len(), || {
            "the parent repeated a nonce".into()
        })?;
        let theirs: HashSet<_> = child.nonces.iter().copied().collect();
        check(theirs.len() == child.nonces.len(), || {
            "the child repeated a nonce".into()
        })?;
        check(ours.is_disjoint(&theirs), || {
            "parent and child sealed under the same nonce".into()
        })?;
        let parent_salt = salt_of(&parent[0]);
        check(parent.iter().all(|n| salt_of(n) == parent_salt), || {
            "the parent's salt changed".into()
        })?;
        check(
            child.nonces.iter().all(|n| salt_of(n) == child.salt),
            || "the child's nonces do not carry the salt it reported".into(),
        )?;
        check(child.salt != parent_salt, || {
            "the child kept the parent's salt".into()
        })
    }

    /// A reserved cipher (absolute numbers): parent and child continue from the same count, so
    /// they use the same invocation numbers and only the salt keeps their nonces apart.
    fn reserved(seal_before: bool) -> Result<(), String> {
        testing::register_fork_handler().map_err(|e| e.to_string())?;
        let generation = testing::fork_generation();
        let c = reserved_cipher();
        let before = if seal_before {
            seal_pages(&c, 10)?
        } else {
            Vec::new()
        };
        check(c.nonce_salt().is_some() == seal_before, || {
            "the salt is drawn at the first seal, not before".into()
        })?;
        let ((parent, parent_salt), child) = fork_with(
            &c,
            |c| Ok((seal_pages(c, PAGES)?, Vec::new())),
            |c| Ok((seal_pages(c, PAGES)?, c.nonce_salt())),
        )?;
        check(child.generation == generation + 1, || {
            format!(
                "the child's fork generation is {}, expected {}",
                child.generation,
                generation + 1
            )
        })?;
        check(testing::fork_generation() == generation, || {
            "the parent's fork generation changed".into()
        })?;
        if let Some(first) = before.first() {
            check(parent_salt == Some(salt_of(first)), || {
                "the parent drew a new salt after forking".into()
            })?;
        }
        check_disjoint(&before, &parent, &child)?;
        let numbers = |v: &[[u8; 12]]| v.iter().map(number_of).collect::<Vec<_>>();
        let start = 1_000 + before.len() as u32;
        let expected: Vec<u32> = (start..start + PAGES as u32).collect();
        check(numbers(&parent) == expected, || {
            "the parent's invocation numbers are not absolute and consecutive".into()
        })?;
        check(numbers(&child.nonces) == expected, || {
            "the child does not continue from the parent's count".into()
        })
    }

    /// `TableCipher::new`: the child also draws a new base for its invocation numbers.
    fn unreserved() -> Result<(), String> {
        let c = TableCipher::new(&tek(), Backend::default(), UsageLimits::default()).unwrap();
        let before = seal_pages(&c, 10)?;
        let (parent, child) = fork_with(
            &c,
            |c| Ok((seal_pages(c, PAGES)?, Vec::new())),
            |c| seal_pages(c, PAGES),
        )?;
        check_disjoint(&before, &parent, &child)?;
        check(number_of(&child.nonces[0]) != number_of(&parent[0]), || {
            "the child kept the parent's base".into()
        })
    }

    /// The child's pages are ordinary format-1 pages: the parent opens them with its own copy of
    /// the cipher, whatever salt they carry.
    fn child_page_opens_in_parent() -> Result<(), String> {
        let c = reserved_cipher();
        let (_, child) = fork_with(
            &c,
            |c| {
                let nonces = seal_pages(c, PAGES)?;
                let sealed = c
                    .seal(b"forked/page/1", b"sealed by the child")
                    .map_err(|e| e.to_string())?;
                Ok((nonces, sealed))
            },
            |_| Ok(()),
        )?;
        check(child.sealed.len() > HEADER_LEN, || {
            "the child sent no page".into()
        })?;
        let opened = c
            .open(b"forked/page/1", &child.sealed)
            .map_err(|e| format!("the parent cannot open the child's page: {e}"))?;
        check(opened == b"sealed by the child", || {
            "the child's page opened to other bytes".into()
        })
    }
}
