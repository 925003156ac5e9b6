//! Resolving an image's `User` (`name`, `uid`, `uid:gid`, `name:group`)
//! against the guest root's own `/etc/passwd` and `/etc/group`: no NSS, the
//! files are parsed directly (as runc does), so it works in any image.

/// Who a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group first).
    pub groups: Vec<u32>,
    /// The user's home directory (`/` when the user has no passwd entry).
    pub home: String,
}

#[derive(Debug)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` of each `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` with the contents of `/etc/passwd` and `/etc/group`
/// (empty when the image has none). A numeric uid needs no passwd entry
/// (its group is then 0, as Docker does); a name must have one.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("invalid user `{spec}`"));
    }
    let (uid, entry) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd_entries(passwd).find(|e| e.uid == uid)),
        Err(_) => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| format!("user `{user}` is not in the image's /etc/passwd"))?;
            (e.uid, Some(e))
        }
    };
    let gid = match grp {
        None | Some("") => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| format!("group `{g}` is not in the image's /etc/group"))?,
        },
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry
            .as_ref()
            .map_or("/", |e| if e.home.is_empty() { "/" } else { e.home })
            .to_string(),
    })
}

/// Resolves `spec` against the running root's files.
pub fn resolve_here(spec: &str) -> Result<Identity, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
# a comment\n\
app:x:1000:1000:App:/home/app:/bin/sh\n\
svc:x:999:998::/:/usr/sbin/nologin\n\
broken:x:notanumber:1::/:\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app,svc\nsvc:x:998:\naudio:x:29:svc\n";

    fn id(spec: &str) -> Identity {
        resolve(spec, PASSWD, GROUP).unwrap()
    }

    #[test]
    fn names_resolve_with_primary_and_member_groups() {
        let a = id("app");
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(a.groups, [1000, 50]);
        assert_eq!(id("svc").groups, [998, 50, 29]);
        assert_eq!(id("root").groups, [0]);
    }

    #[test]
    fn numeric_users_need_no_entry() {
        let n = id("4242");
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 0, "/"));
        assert_eq!(n.groups, [0]);
        // A numeric uid with an entry gets that entry's group and home.
        let a = id("1000");
        assert_eq!((a.gid, a.home.as_str()), (1000, "/home/app"));
    }

    #[test]
    fn explicit_groups_by_number_or_name() {
        assert_eq!((id("1000:1000").uid, id("1000:1000").gid), (1000, 1000));
        assert_eq!(id("app:staff").gid, 50);
        assert_eq!(id("app:7").gid, 7);
        assert_eq!(id("4242:staff").gid, 50);
        assert_eq!(id("app:staff").groups, [50]);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve("nobody", PASSWD, GROUP)
            .unwrap_err()
            .contains("nobody"));
        assert!(resolve("app:wheel", PASSWD, GROUP)
            .unwrap_err()
            .contains("wheel"));
        assert!(resolve("broken", PASSWD, GROUP).is_err());
        assert!(resolve("", PASSWD, GROUP).is_err());
        assert!(resolve(":1", PASSWD, GROUP).is_err());
        // No passwd file at all: names fail, numbers work.
        assert!(resolve("app", "", "").is_err());
        assert_eq!(resolve("5:6", "", "").unwrap().groups, [6]);
    }
}
