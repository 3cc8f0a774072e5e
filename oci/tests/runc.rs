//! The runtime specs under the real runc: each test writes `config.json` from `spec::build`
//! into a bundle whose rootfs holds a static busybox, runs it with `runc run`, and checks from
//! inside the container that the spec took effect: user and groups, capabilities,
//! no_new_privs, seccomp, read-only and masked paths, bind mounts, namespaces, cgroup limits.
//! One test runs the host's own glibc programs (its /usr bound read-only) under the default
//! seccomp profile instead.
//!
//! These tests need root, runc and a static busybox at /usr/bin/busybox; without them they
//! fail (they do not skip). Every container is deleted and every temporary directory and
//! cgroup removed, even when a test fails.
use flotilla_oci::spec::{self, BindMount, Input};
use flotilla_proto::api::{
    Capabilities, Container, Pod, PodSecurityContext, SeccompProfile, SecurityContext,
};
use flotilla_proto::quantity::Quantity;
use oci_spec::image::{Config, ConfigBuilder};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/usr/bin/busybox";
/// The parent cgroup of the test containers.
const CGROUP_PARENT: &str = "flotilla-test";
/// How long a container may run before it is killed and the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "touch", "grep", "ls", "wc", "mount", "unshare", "sleep", "seq",
    "hostname", "pwd", "readlink", "cut", "head", "test", "true",
];

/// Held (shared) while a container runs; taken exclusively to remove the parent cgroup, so
/// that it is never removed under a runc about to create a container in it.
static RUNNING: RwLock<()> = RwLock::new(());

fn require_runc() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let busybox = Path::new(BUSYBOX).is_file();
    assert!(
        root && runc && busybox,
        "runc tests need root and runc: run scripts/setup (root: {root}, runc: {runc}, {BUSYBOX}: {busybox})"
    );
}

/// What a container printed and how it exited.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn ok(self) -> Outcome {
        assert_eq!(self.code, 0, "the container failed: {self:#?}");
        self
    }

    /// The value of a `Key:\tvalue` line, as /proc/self/status has them.
    fn field(&self, key: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {key} in {self:#?}"))
            .trim()
    }
}

/// A bundle (busybox rootfs, config.json, runc state) in a temporary directory, for one
/// container. Dropping it deletes the container and the directory.
struct Bundle {
    dir: tempfile::TempDir,
    id: String,
}

impl Bundle {
    /// A bundle whose rootfs has busybox (and its applets) in /bin, /etc/passwd with root
    /// and `app` (1000), and /etc/group with `staff` (50) listing `app`.
    fn new(name: &str) -> Bundle {
        let bundle = Bundle::empty(name);
        let rootfs = bundle.rootfs();
        std::fs::create_dir(rootfs.join("bin")).unwrap();
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        bundle
    }

    /// A bundle whose rootfs has only empty directories, /etc/passwd and /etc/group.
    fn empty(name: &str) -> Bundle {
        require_runc();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "flotilla-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = Bundle {
            dir: tempfile::tempdir().unwrap(),
            id,
        };
        let rootfs = bundle.rootfs();
        for dir in [
            "etc", "proc", "dev", "sys", "tmp", "mnt", "root", "home/app",
        ] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .unwrap();
        bundle
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("runc-state")
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(self.state());
        cmd
    }

    /// Builds the spec of the pod's first container and runs it to completion.
    fn run(&self, pod: &Pod, opts: &Opts) -> Outcome {
        let cgroups_path = format!("/{CGROUP_PARENT}/{}", self.id);
        let rootfs = self.rootfs();
        let spec = spec::build(&Input {
            pod,
            container: &pod.spec.containers[0],
            image: opts.image.as_ref(),
            rootfs: &rootfs,
            env: &opts.env,
            mounts: &opts.mounts,
            netns: opts.netns.as_deref(),
            cgroups_path: &cgroups_path,
            pids_limit: opts.pids_limit,
        })
        .unwrap();
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();

        let _running = RUNNING.read().unwrap_or_else(|e| e.into_inner());
        let mut child = self
            .runc()
            .arg("run")
            .arg("--bundle")
            .arg(self.dir.path())
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting runc");
        let read = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.runc().args(["kill", &self.id, "KILL"]).status();
                let _ = child.kill();
                let _ = child.wait();
                panic!("the container ran longer than {TIMEOUT:?}: killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Quietly: there is nothing to delete after a container that ran to its end.
        let _ = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The parent cgroup, once no test container runs (rmdir removes only empty ones).
        if let Ok(_idle) = RUNNING.try_write() {
            let v2 = Path::new("/sys/fs/cgroup").join(CGROUP_PARENT);
            let _ = std::fs::remove_dir(v2);
            for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(hierarchy.path().join(CGROUP_PARENT));
            }
        }
    }
}

#[derive(Default)]
struct Opts {
    image: Option<Config>,
    env: Vec<(String, String)>,
    mounts: Vec<BindMount>,
    netns: Option<PathBuf>,
    pids_limit: i64,
}

/// A pod `web-0` with one container running `script` under `/bin/sh -c`.
fn pod(script: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = "web-0".into();
    pod.spec.containers.push(Container {
        name: "web".into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Container::default()
    });
    pod
}

fn sc(pod: &mut Pod) -> &mut SecurityContext {
    pod.spec.containers[0]
        .security_context
        .get_or_insert_with(SecurityContext::default)
}

fn run(name: &str, pod: &Pod) -> Outcome {
    Bundle::new(name).run(pod, &Opts::default())
}

const STATUS: &str =
    "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status";

#[test]
fn runs_as_the_requested_user_and_groups() {
    let mut pod = pod("id -u; id -g; id -G");
    sc(&mut pod).run_as_user = Some(1000);
    sc(&mut pod).run_as_group = Some(1000);
    pod.spec.security_context = Some(PodSecurityContext {
        supplemental_groups: vec![2000],
        fs_group: Some(3000),
        ..PodSecurityContext::default()
    });
    let out = run("user", &pod).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[..2], ["1000", "1000"], "{out:#?}");
    // The primary group, staff from /etc/group, supplementalGroups and fsGroup.
    let mut groups: Vec<&str> = lines[2].split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["1000", "2000", "3000", "50"], "{out:#?}");
}

#[test]
fn resolves_the_images_user_in_the_rootfs() {
    let pod = pod("id -u; id -un; id -g");
    let opts = Opts {
        image: Some(ConfigBuilder::default().user("app").build().unwrap()),
        ..Opts::default()
    };
    let out = Bundle::new("image-user").run(&pod, &opts).ok();
    assert_eq!(out.stdout, "1000\napp\n1000\n");
}

#[test]
fn root_without_capabilities_no_new_privs_and_seccomp_by_default() {
    let out = run("default", &pod(STATUS)).ok();
    // Not a warning from runc either (about an unknown syscall or capability...).
    assert_eq!(out.stderr, "");
    assert_eq!(out.stdout.lines().count(), 6, "{out:#?}");
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(out.field(set), "0000000000000000", "{set}");
    }
    assert_eq!(out.field("NoNewPrivs"), "1");
    // 2: a seccomp filter.
    assert_eq!(out.field("Seccomp"), "2");
}

#[test]
fn an_added_capability_is_effective() {
    let mut pod = pod(STATUS);
    sc(&mut pod).capabilities = Some(Capabilities {
        add: vec!["NET_BIND_SERVICE".into()],
        drop: vec!["ALL".into()],
    });
    let out = run("net-bind", &pod).ok();
    // CAP_NET_BIND_SERVICE is bit 10.
    assert_eq!(out.field("CapEff"), "0000000000000400");
    assert_eq!(out.field("CapBnd"), "0000000000000400");
    assert_eq!(out.field("CapAmb"), "0000000000000000");
}

#[test]
fn allow_privilege_escalation_keeps_seccomp() {
    // Without no_new_privs runc loads the filter before it changes user and capabilities:
    // what it needs for that must be allowed.
    let mut pod = pod(&format!("id -u; {STATUS}"));
    sc(&mut pod).allow_privilege_escalation = Some(true);
    sc(&mut pod).run_as_user = Some(1000);
    let out = run("escalation", &pod).ok();
    assert!(out.stdout.starts_with("1000\n"), "{out:#?}");
    assert_eq!(out.field("NoNewPrivs"), "0");
    assert_eq!(out.field("Seccomp"), "2");
    assert_eq!(out.field("CapEff"), "0000000000000000");
}

#[test]
fn privileged_has_the_agents_capabilities_and_no_seccomp() {
    let mut pod = pod(&format!("{STATUS}; test -c /dev/kmsg && echo kmsg"));
    sc(&mut pod).privileged = Some(true);
    let out = run("privileged", &pod).ok();
    assert_eq!(out.stderr, "");
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours = ours
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    assert_eq!(out.field("CapEff"), ours);
    assert_eq!(out.field("NoNewPrivs"), "0");
    assert_eq!(out.field("Seccomp"), "0");
    // A host device runc does not add to every container.
    if Path::new("/dev/kmsg").exists() {
        assert!(out.stdout.contains("kmsg"), "{out:#?}");
    }
}

#[test]
fn a_read_only_rootfs_refuses_writes() {
    let mut pod = pod("touch /x");
    sc(&mut pod).read_only_root_filesystem = Some(true);
    let out = run("ro-root", &pod);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");

    // The same container on a writable rootfs.
    let out = run("rw-root", &self::pod("touch /x && echo wrote")).ok();
    assert_eq!(out.stdout, "wrote\n");
}

#[test]
fn masked_and_read_only_paths() {
    // Every masked path this host has reads as empty in the container.
    let mut script = String::new();
    let mut hidden = 0;
    for path in spec::MASKED_PATHS {
        let path = Path::new(path);
        let size = if path.is_dir() {
            script += &format!("echo {}=$(ls {} | wc -l); ", path.display(), path.display());
            std::fs::read_dir(path).unwrap().count()
        } else if path.is_file() {
            script += &format!("echo {}=$(wc -c < {}); ", path.display(), path.display());
            std::fs::read(path).map_or(0, |b| b.len())
        } else {
            continue;
        };
        hidden += size;
    }
    assert!(
        hidden > 0,
        "no masked path of this host has content: the test proves nothing"
    );
    script += "echo x > /proc/sys/kernel/domainname && echo proc-sys-written; \
               touch /sys/x && echo sys-written";
    let out = run("masked", &pod(&script));
    let masked: Vec<&str> = out.stdout.lines().collect();
    assert!(!masked.is_empty(), "{out:#?}");
    for line in masked {
        assert!(line.ends_with("=0"), "{line}: {out:#?}");
    }
    assert!(
        out.stderr
            .contains("can't create /proc/sys/kernel/domainname: Read-only file system"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("touch: /sys/x: Read-only file system"),
        "{out:#?}"
    );
}

#[test]
fn mounts_and_namespaces_are_refused() {
    let script = "\
        mount -t tmpfs none /mnt && echo mounted; \
        unshare -U true && echo unshared-user; \
        unshare -n true && echo unshared-net; \
        echo done";
    let out = run("no-mount", &pod(script)).ok();
    assert_eq!(out.stdout, "done\n", "{out:#?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:#?}");
}

#[test]
fn seccomp_alone_refuses_a_user_namespace() {
    // Creating a user namespace needs no capability: only the filter stands in the way.
    let script = "unshare -U true && echo unshared";
    let out = run("seccomp-userns", &pod(script));
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:#?}");

    let mut pod = pod(script);
    sc(&mut pod).seccomp_profile = Some(SeccompProfile {
        type_: "Unconfined".into(),
        localhost_profile: None,
    });
    let out = run("unconfined-userns", &pod).ok();
    assert_eq!(out.stdout, "unshared\n");
}

#[test]
fn sys_admin_unlocks_mount() {
    let mut pod = pod("mount -t tmpfs none /mnt && echo mounted");
    sc(&mut pod).capabilities = Some(Capabilities {
        add: vec!["SYS_ADMIN".into()],
        drop: vec![],
    });
    let out = run("sys-admin", &pod).ok();
    assert_eq!(out.stdout, "mounted\n");
}

#[test]
fn the_exit_code_is_the_containers() {
    let out = run("exit", &pod("exit 7"));
    assert_eq!(out.code, 7, "{out:#?}");
}

#[test]
fn env_args_cwd_and_hostname_take_effect() {
    let mut pod = Pod::default();
    pod.metadata.name = "web-0".into();
    pod.spec.containers.push(Container {
        name: "web".into(),
        args: vec![
            r#"echo "$FOO $BAR $HOSTNAME"; pwd; hostname; echo "$0" "$@""#.into(),
            "a".into(),
            "b".into(),
        ],
        ..Container::default()
    });
    let opts = Opts {
        image: Some(
            ConfigBuilder::default()
                .entrypoint(vec!["/bin/sh".to_string(), "-c".to_string()])
                .cmd(vec!["echo from the image".to_string()])
                .env(vec!["FOO=image".to_string(), "BAR=image".to_string()])
                .working_dir("/tmp")
                .build()
                .unwrap(),
        ),
        env: vec![("FOO".into(), "pod".into())],
        ..Opts::default()
    };
    let out = Bundle::new("env").run(&pod, &opts).ok();
    assert_eq!(out.stdout, "pod image web-0\n/tmp\nweb-0\na b\n");
}

#[test]
fn bind_mounts_read_only_and_read_write() {
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("data")).unwrap();
    std::fs::write(host.path().join("data/hello"), "hello from the host\n").unwrap();
    std::fs::create_dir(host.path().join("scratch")).unwrap();
    let opts = Opts {
        mounts: vec![
            BindMount {
                source: host.path().join("data"),
                destination: "/data".into(),
                read_only: true,
            },
            BindMount {
                source: host.path().join("scratch"),
                destination: "/scratch".into(),
                read_only: false,
            },
        ],
        ..Opts::default()
    };
    let script = "cat /data/hello; touch /data/new && echo data-written; echo hi > /scratch/out";
    let out = Bundle::new("binds").run(&pod(script), &opts).ok();
    assert_eq!(out.stdout, "hello from the host\n", "{out:#?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");
    assert!(!host.path().join("data/new").exists());
    assert_eq!(
        std::fs::read_to_string(host.path().join("scratch/out")).unwrap(),
        "hi\n"
    );
}

#[test]
fn a_pids_limit_stops_a_fork_loop() {
    // Each started sleep prints its pid; forks fail once the cgroup holds 20 tasks.
    let script = "for i in $(seq 100); do sleep 30 & echo $!; done 2>/dev/null; true";
    let opts = Opts {
        pids_limit: 20,
        ..Opts::default()
    };
    let started = Instant::now();
    let out = Bundle::new("pids").run(&pod(script), &opts);
    let sleeps = out.stdout.lines().count();
    assert!(
        (5..20).contains(&sleeps),
        "{sleeps} sleeps started under pids.max 20: {out:#?}"
    );
    // The sleeps died with the container rather than running out their 30s.
    assert!(started.elapsed() < Duration::from_secs(25), "{out:#?}");
}

#[test]
fn resources_reach_the_cgroup() {
    let mut pod = pod(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
         cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max; \
         cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    );
    let resources = &mut pod.spec.containers[0].resources;
    resources
        .limits
        .insert("memory".into(), Quantity("64Mi".into()));
    resources
        .limits
        .insert("cpu".into(), Quantity("500m".into()));
    let opts = Opts {
        pids_limit: 32,
        ..Opts::default()
    };
    let out = Bundle::new("resources").run(&pod, &opts).ok();
    assert_eq!(out.stdout, "67108864\n50000\n32\n", "{out:#?}");
}

fn host_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn a_new_network_namespace_has_only_loopback() {
    let script = "readlink /proc/self/ns/net; cut -d: -f1 /proc/net/dev";
    let out = run("netns-new", &pod(script)).ok();
    let mut lines = out.stdout.lines();
    assert_ne!(lines.next(), Some(host_netns().as_str()), "{out:#?}");
    // /proc/net/dev: two header lines, then one line per interface.
    let interfaces: Vec<&str> = lines.skip(2).map(str::trim).collect();
    assert_eq!(interfaces, ["lo"], "{out:#?}");
}

#[test]
fn joins_the_given_network_namespace_or_the_hosts() {
    let script = "readlink /proc/self/ns/net; hostname";
    let host_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();

    // Joined by path (here the test's own, i.e. the host's).
    let opts = Opts {
        netns: Some(format!("/proc/{}/ns/net", std::process::id()).into()),
        ..Opts::default()
    };
    let out = Bundle::new("netns-join").run(&pod(script), &opts).ok();
    assert_eq!(out.stdout, format!("{}\nweb-0\n", host_netns()));

    // hostNetwork: the host's network and UTS namespaces.
    let mut pod = pod(script);
    pod.spec.host_network = true;
    let out = run("host-network", &pod).ok();
    assert_eq!(out.stdout, format!("{}\n{host_hostname}", host_netns()));
}

#[test]
fn a_glibc_userland_runs_under_the_default_profile() {
    // The host's own programs (Debian's essential dash, coreutils, tar, gzip, perl-base),
    // dynamically linked against glibc: what the allow-list must let ordinary programs do.
    let bundle = Bundle::empty("glibc");
    let rootfs = bundle.rootfs();
    let mut mounts = Vec::new();
    for dir in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(dir);
        match std::fs::symlink_metadata(&host) {
            // Merged /usr: the same links.
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host).unwrap();
                std::os::unix::fs::symlink(target, rootfs.join(dir)).unwrap();
            }
            Ok(m) if m.is_dir() => mounts.push(BindMount {
                source: host,
                destination: format!("/{dir}"),
                read_only: true,
            }),
            _ => {}
        }
    }
    if Path::new("/etc/ld.so.cache").exists() {
        std::fs::copy("/etc/ld.so.cache", rootfs.join("etc/ld.so.cache")).unwrap();
    }
    let perl = r#"
        use IO::Socket::INET;
        my $server = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, Proto => "tcp") or die "listen: $!";
        my $port = $server->sockport;
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $port) or die "connect: $!";
            print $c "ping\n";
            exit 0;
        }
        my $conn = $server->accept or die "accept: $!";
        my $line = <$conn>;
        waitpid($pid, 0);
        print "perl got $line";
    "#;
    let python = r#"
import asyncio, subprocess, threading
threads = [threading.Thread(target=sum, args=([1, 2],)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(subprocess.run(["echo", "python", "subprocess"], capture_output=True, text=True).stdout.strip())
async def main():
    await asyncio.sleep(0.01)
    return "python asyncio"
print(asyncio.run(main()))
"#;
    let mut script = format!(
        "set -e; \
         ls /usr/bin > /dev/null; date > /dev/null; \
         seq 1 300000 | sort --parallel=2 -S 20M -rn | head -n 1; \
         echo gzip | gzip | gunzip; \
         tar -cf - -C /etc passwd | tar -tf -; \
         perl -e '{perl}'; "
    );
    let python_too = Path::new("/usr/bin/python3").exists();
    if python_too {
        script += &format!("python3 -c '{python}'; ");
    }
    script += "echo done";
    let opts = Opts {
        mounts,
        // The host's loopback (a new network namespace's is down).
        netns: Some(format!("/proc/{}/ns/net", std::process::id()).into()),
        ..Opts::default()
    };
    let out = bundle.run(&pod(&script), &opts).ok();
    let mut expected = "300000\ngzip\npasswd\nperl got ping\n".to_string();
    if python_too {
        expected += "python subprocess\npython asyncio\n";
    }
    expected += "done\n";
    assert_eq!(out.stdout, expected, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
}
