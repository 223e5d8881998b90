//! What the writer knows about its own process, computed once when the log is opened and
//! written into every line (format 2).

use super::format::AuditRecord;
use heliosdb_tde_core::SecurityMode;

/// The writing process: pid, uid and user name, executable, host and security mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessFacts {
    pid: u32,
    uid: u32,
    user: Option<String>,
    exe: Option<String>,
    host: Option<String>,
    mode: Option<String>,
}

impl ProcessFacts {
    /// The facts of the running process, with the security mode the caller resolved.
    pub(crate) fn current(mode: Option<SecurityMode>) -> Self {
        let uid = rustix::process::getuid().as_raw();
        Self {
            pid: std::process::id(),
            uid,
            user: std::fs::read_to_string("/etc/passwd")
                .ok()
                .and_then(|text| user_name(&text, uid)),
            exe: std::env::current_exe()
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            host: host_name(),
            mode: mode.map(|m| m.to_string()),
        }
    }

    /// Writes the facts into `record`.
    pub(crate) fn fill(&self, record: &mut AuditRecord) {
        record.pid = Some(self.pid);
        record.uid = Some(self.uid);
        record.user.clone_from(&self.user);
        record.exe.clone_from(&self.exe);
        record.host.clone_from(&self.host);
        record.mode.clone_from(&self.mode);
    }
}

/// The name of `uid` in a password database in `/etc/passwd` format, if listed.
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let id: u32 = fields.next()?.trim().parse().ok()?;
            (id == uid && !name.is_empty()).then(|| name.to_string())
        })
}

/// The host name: the kernel's, else `/etc/hostname`.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .into_iter()
        .find_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let name = text.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_come_from_the_matching_passwd_line() {
        let passwd =
            "# comment\nroot:x:0:0:root:/root:/bin/sh\nsvc:x:1001:1001::/home/svc:/bin/sh\n";
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 1001).as_deref(), Some("svc"));
        assert_eq!(user_name(passwd, 7), None);
        assert_eq!(user_name("garbage\n:x:5:5\n", 5), None);
    }

    #[test]
    fn the_current_process_is_described() {
        let f = ProcessFacts::current(Some(SecurityMode::Development));
        assert_eq!(f.pid, std::process::id());
        assert_eq!(f.mode.as_deref(), Some("development"));
        let mut r = AuditRecord::default();
        f.fill(&mut r);
        assert_eq!(r.pid, Some(f.pid));
        assert_eq!(r.uid, Some(f.uid));
        assert!(r.exe.is_some());
    }
}
