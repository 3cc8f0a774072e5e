//! What `runc --version` says, and which of runc's known vulnerabilities that version is
//! below the upstream fixes of: pure, reported in node status as `nodeInfo.
//! containerRuntimeVersion` and the `ContainerRuntimeVulnerable` condition.
//!
//! The table holds runc's container escapes and other advisories that matter to a node, with
//! the upstream releases that fixed them (from runc's CHANGELOG.md and security advisories,
//! and for the fixes before 1.0 the release tags containing the fix commits). The check is by
//! upstream version number only: a distribution that backports a fix without changing the
//! upstream version (Debian's `1.1.5+ds1-1+deb12u1`) is still reported.
use flotilla_proto::api::Condition;
use std::cmp::Ordering;

/// The node condition this module reports.
pub const CONDITION: &str = "ContainerRuntimeVulnerable";

/// An upstream runc version: `major.minor.patch` and an optional release candidate number
/// (`1.2.0-rc.1` and the old `1.0.0-rc95` alike). Build metadata (`+ds1`) is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// None for a release; Some(n) for its n-th pre-release, which sorts before it.
    pub pre: Option<u64>,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then(match (self.pre, other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(&b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        match self.pre {
            Some(n) => write!(f, "-rc.{n}"),
            None => Ok(()),
        }
    }
}

impl Version {
    /// `1.1.5`, `1.1.5+ds1`, `1.2.0-rc.1`, `1.0.0-rc95`, `v1.1.12`; None for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (s, None),
        };
        let mut parts = core.split('.');
        let num = |p: Option<&str>| -> Option<u64> {
            let p = p?;
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        let patch = match parts.next() {
            Some(p) => num(Some(p))?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        let pre = match pre {
            None => None,
            // `rc.1`, `rc95`, `rc.3.dev`: the first number is the candidate; a pre-release
            // without one (`dev`) sorts before every candidate.
            Some(p) => {
                let digits: String = p
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                Some(digits.parse().unwrap_or(0))
            }
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }

    fn line(&self) -> (u64, u64) {
        (self.major, self.minor)
    }
}

/// What `runc --version` printed, understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuncVersion {
    /// The version as runc printed it (`1.1.5+ds1`).
    pub printed: String,
    /// The upstream version in it, if it parses.
    pub version: Option<Version>,
    /// The `commit:` line (a git describe upstream, the package version on Debian).
    pub commit: Option<String>,
}

impl RuncVersion {
    /// Parses `runc --version` output (`runc version 1.1.5+ds1\ncommit: …\nspec: …`).
    pub fn parse(output: &str) -> RuncVersion {
        let mut printed = String::new();
        let mut commit = None;
        for line in output.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("runc version") {
                printed = v.split_whitespace().next().unwrap_or("").to_string();
            } else if let Some(c) = line.strip_prefix("commit:") {
                let c = c.trim();
                if !c.is_empty() {
                    commit = Some(c.to_string());
                }
            }
        }
        RuncVersion {
            version: Version::parse(&printed),
            printed,
            commit,
        }
    }

    /// `runc://1.1.5` (Kubernetes' `containerRuntimeVersion` form), the upstream version when
    /// it parses, else what runc printed.
    pub fn runtime_version(&self) -> String {
        match &self.version {
            Some(v) => format!("runc://{v}"),
            None if self.printed.is_empty() => "runc://unknown".into(),
            None => format!("runc://{}", self.printed),
        }
    }
}

/// One known vulnerability of runc.
#[derive(Clone, Copy, Debug)]
pub struct Advisory {
    pub id: &'static str,
    /// As upstream rated it: high, moderate or low.
    pub severity: &'static str,
    pub summary: &'static str,
    /// The first affected version, when not all earlier ones were.
    pub introduced: Option<&'static str>,
    /// The first fixed release of each release line that got a fix. A version of a line
    /// newer than every line listed has the fix; a line without an entry older than (or
    /// between) them does not.
    pub fixed: &'static [&'static str],
}

/// runc's container escapes and other advisories that matter to a node, oldest first.
pub const ADVISORIES: &[Advisory] = &[
    Advisory {
        id: "CVE-2019-5736",
        severity: "high",
        summary: "a container process can overwrite the host's runc binary through /proc/self/exe",
        introduced: None,
        fixed: &["1.0.0-rc7"],
    },
    Advisory {
        id: "CVE-2019-16884",
        severity: "moderate",
        summary: "a malicious image can mount over /proc and escape its AppArmor profile",
        introduced: None,
        fixed: &["1.0.0-rc9"],
    },
    Advisory {
        id: "CVE-2019-19921",
        severity: "moderate",
        summary: "a race with shared volumes redirects runc's /proc mount and drops LSM labels",
        introduced: None,
        fixed: &["1.0.0-rc10"],
    },
    Advisory {
        id: "CVE-2021-30465",
        severity: "high",
        summary: "a symlink-exchange race in mount destinations mounts host paths into a container",
        introduced: None,
        fixed: &["1.0.0-rc95"],
    },
    Advisory {
        id: "CVE-2022-29162",
        severity: "moderate",
        summary: "runc exec --cap gives processes inheritable capabilities",
        introduced: None,
        fixed: &["1.1.2"],
    },
    Advisory {
        id: "CVE-2023-25809",
        severity: "low",
        summary: "rootless containers can write to the host's user.slice cgroup",
        introduced: None,
        fixed: &["1.1.5"],
    },
    Advisory {
        id: "CVE-2023-27561",
        severity: "high",
        summary: "symlinked /proc in a volume tricks runc into a wrong setup (CVE-2019-19921 again)",
        introduced: Some("1.0.0-rc95"),
        fixed: &["1.1.5"],
    },
    Advisory {
        id: "CVE-2023-28642",
        severity: "high",
        summary: "a /proc symlink in the rootfs bypasses AppArmor and SELinux",
        introduced: Some("1.0.0-rc95"),
        fixed: &["1.1.5"],
    },
    Advisory {
        id: "CVE-2024-21626",
        severity: "high",
        summary: "Leaky Vessels: a leaked directory descriptor gives a container the host filesystem",
        introduced: None,
        fixed: &["1.1.12"],
    },
    Advisory {
        id: "CVE-2024-45310",
        severity: "low",
        summary: "a race with shared volumes creates empty files and directories on the host",
        introduced: None,
        fixed: &["1.1.14", "1.2.0-rc.3"],
    },
    Advisory {
        id: "CVE-2025-31133",
        severity: "high",
        summary: "a /dev/null symlink turns masked paths into writable host procfs mounts",
        introduced: None,
        fixed: &["1.2.8", "1.3.3", "1.4.0-rc.3"],
    },
    Advisory {
        id: "CVE-2025-52565",
        severity: "high",
        summary: "a /dev/pts symlink redirects the /dev/console bind mount",
        introduced: Some("1.0.0-rc3"),
        fixed: &["1.2.8", "1.3.3", "1.4.0-rc.3"],
    },
    Advisory {
        id: "CVE-2025-52881",
        severity: "high",
        summary: "redirected writes to procfs (LSM labels, sysctls) through shared mounts",
        introduced: None,
        fixed: &["1.2.8", "1.3.3", "1.4.0-rc.3"],
    },
    Advisory {
        id: "CVE-2026-41579",
        severity: "low",
        summary: "a /dev symlink in an image gives limited writes to the host filesystem",
        introduced: None,
        fixed: &["1.3.6", "1.4.3", "1.5.0-rc.3"],
    },
];

impl Advisory {
    /// Whether upstream `v` has this advisory's fix (or predates the bug).
    pub fn affects(&self, v: &Version) -> bool {
        if let Some(first) = self.introduced.and_then(Version::parse)
            && *v < first
        {
            return false;
        }
        let fixes: Vec<Version> = self
            .fixed
            .iter()
            .filter_map(|f| Version::parse(f))
            .collect();
        if let Some(f) = fixes.iter().find(|f| f.line() == v.line()) {
            return v < f;
        }
        !fixes.iter().all(|f| v.line() > f.line())
    }
}

/// The advisories `v` is below the fixes of.
pub fn affecting(v: &Version) -> Vec<&'static Advisory> {
    ADVISORIES.iter().filter(|a| a.affects(v)).collect()
}

/// The `ContainerRuntimeVulnerable` node condition for the runc found at start.
pub fn condition(runc: &RuncVersion) -> Condition {
    let package = runc
        .commit
        .as_deref()
        .filter(|c| *c != runc.printed)
        .map(|c| format!(" (commit: {c})"))
        .unwrap_or_default();
    let Some(v) = runc.version else {
        return Condition::new(
            CONDITION,
            "Unknown",
            "VersionUnknown",
            format!(
                "cannot tell runc's version from {:?}; known vulnerabilities were not checked",
                runc.printed
            ),
        );
    };
    let found = affecting(&v);
    if found.is_empty() {
        return Condition::new(
            CONDITION,
            "False",
            "NoKnownVulnerabilities",
            format!(
                "runc {v}{package} has the upstream fixes of every runc vulnerability the agent knows ({} checked by upstream version)",
                ADVISORIES.len()
            ),
        );
    }
    let list: Vec<String> = found
        .iter()
        .map(|a| format!("{} ({}; fixed in {})", a.id, a.severity, a.fixed.join(", ")))
        .collect();
    Condition::new(
        CONDITION,
        "True",
        "KnownVulnerabilities",
        format!(
            "runc {v}{package} is older than the upstream fixes of {}: {}. Checked by upstream version only: fixes a distribution backported (such as Debian's +debNuN packages) are not seen",
            found.len(),
            list.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    fn ids(version: &str) -> Vec<&'static str> {
        affecting(&v(version)).iter().map(|a| a.id).collect()
    }

    #[test]
    fn versions_parse_as_runc_prints_them() {
        let debian = RuncVersion::parse(
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\nlibseccomp: 2.5.4\n",
        );
        assert_eq!(debian.printed, "1.1.5+ds1");
        assert_eq!(debian.version, Some(v("1.1.5")));
        assert_eq!(debian.commit.as_deref(), Some("1.1.5+ds1-1+deb12u1"));
        assert_eq!(debian.runtime_version(), "runc://1.1.5");
        let rc = RuncVersion::parse("runc version 1.2.0-rc.1\ncommit: v1.2.0-rc.1-0-g275e6d85\n");
        assert_eq!(
            rc.version,
            Some(Version {
                major: 1,
                minor: 2,
                patch: 0,
                pre: Some(1)
            })
        );
        assert_eq!(rc.runtime_version(), "runc://1.2.0-rc.1");
        assert_eq!(v("1.0.0-rc95").pre, Some(95));
        assert_eq!(v("v1.1.12"), v("1.1.12"));
        for garbage in ["", "runc", "1", "1.x.3", "1.2.3.4", "one.two", "-1.2.3"] {
            assert_eq!(Version::parse(garbage), None, "{garbage:?}");
        }
        let odd = RuncVersion::parse("crun version 1.8\n");
        assert_eq!(odd.version, None);
        assert_eq!(odd.runtime_version(), "runc://unknown");
        assert_eq!(condition(&odd).status, "Unknown");
    }

    #[test]
    fn release_candidates_sort_before_their_release() {
        assert!(v("1.2.0-rc.1") < v("1.2.0-rc.3"));
        assert!(v("1.2.0-rc.3") < v("1.2.0"));
        assert!(v("1.0.0-rc10") < v("1.0.0-rc95"));
        assert!(v("1.1.15") < v("1.2.0-rc.1"));
        assert!(v("1.1.5") == v("1.1.5+ds1"));
    }

    #[test]
    fn every_table_entry_parses() {
        for a in ADVISORIES {
            assert!(a.id.starts_with("CVE-"), "{}", a.id);
            assert!(
                ["high", "moderate", "low"].contains(&a.severity),
                "{}",
                a.id
            );
            assert!(!a.fixed.is_empty(), "{}", a.id);
            for f in a.fixed.iter().chain(a.introduced.iter()) {
                assert!(Version::parse(f).is_some(), "{}: {f}", a.id);
            }
        }
    }

    #[test]
    fn lookup_by_release_line() {
        // Debian 12's runc: everything from Leaky Vessels on.
        assert_eq!(
            ids("1.1.5"),
            [
                "CVE-2024-21626",
                "CVE-2024-45310",
                "CVE-2025-31133",
                "CVE-2025-52565",
                "CVE-2025-52881",
                "CVE-2026-41579"
            ]
        );
        assert_eq!(
            ids("1.1.4"),
            [
                "CVE-2023-25809",
                "CVE-2023-27561",
                "CVE-2023-28642",
                "CVE-2024-21626",
                "CVE-2024-45310",
                "CVE-2025-31133",
                "CVE-2025-52565",
                "CVE-2025-52881",
                "CVE-2026-41579"
            ]
        );
        // 1.1.x never got the 2025 fixes.
        assert_eq!(ids("1.1.15")[0], "CVE-2025-31133");
        // A 1.2 candidate before rc.3 lacks the CVE-2024-45310 fix; 1.2.0 has it.
        assert!(ids("1.2.0-rc.2").contains(&"CVE-2024-45310"));
        assert!(!ids("1.2.0").contains(&"CVE-2024-45310"));
        assert!(!ids("1.2.0-rc.1").contains(&"CVE-2024-21626"));
        // The 2025 fixes per line; the 1.2 line ended before CVE-2026-41579 was fixed.
        assert_eq!(
            ids("1.2.7"),
            [
                "CVE-2025-31133",
                "CVE-2025-52565",
                "CVE-2025-52881",
                "CVE-2026-41579"
            ]
        );
        assert_eq!(ids("1.2.9"), ["CVE-2026-41579"]);
        assert_eq!(ids("1.3.2").len(), 4);
        assert_eq!(ids("1.3.5"), ["CVE-2026-41579"]);
        assert!(ids("1.3.6").is_empty());
        assert_eq!(ids("1.4.0-rc.2").len(), 4);
        assert_eq!(ids("1.4.0"), ["CVE-2026-41579"]);
        assert!(ids("1.4.3").is_empty());
        assert!(ids("1.5.0").is_empty());
        assert!(ids("2.0.0").is_empty());
        // Before a regression was introduced, it does not apply.
        assert!(!ids("1.0.0-rc93").contains(&"CVE-2023-27561"));
        assert!(ids("1.0.0-rc93").contains(&"CVE-2021-30465"));
        assert!(ids("1.0.0-rc6").contains(&"CVE-2019-5736"));
        assert!(!ids("1.0.0-rc2").contains(&"CVE-2025-52565"));
    }

    #[test]
    fn the_condition_names_cves_fixes_and_the_backport_caveat() {
        let debian = RuncVersion::parse("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n");
        let c = condition(&debian);
        assert_eq!((c.type_.as_str(), c.status.as_str()), (CONDITION, "True"));
        assert_eq!(c.reason.as_deref(), Some("KnownVulnerabilities"));
        let m = c.message.unwrap();
        assert!(m.contains("CVE-2024-21626 (high; fixed in 1.1.12)"), "{m}");
        assert!(
            m.contains("CVE-2025-31133 (high; fixed in 1.2.8, 1.3.3, 1.4.0-rc.3)"),
            "{m}"
        );
        assert!(m.contains("1.1.5+ds1-1+deb12u1"), "{m}");
        assert!(m.contains("upstream version only"), "{m}");
        let current = condition(&RuncVersion::parse(
            "runc version 1.4.3\ncommit: v1.4.3-0-gabc\n",
        ));
        assert_eq!(current.status, "False");
        assert_eq!(current.reason.as_deref(), Some("NoKnownVulnerabilities"));
    }
}
