//! Generated content (people, messages) and the JSON payloads built from the
//! world, shaped like Bitbucket's full default responses.

use chrono::{DateTime, FixedOffset, Offset, TimeZone, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::rng::{mix, Rng};
use super::world::{hex, Graph, Node, Repo, NO_COMMITTER};
use crate::bitbucket::models::User;

/// A commit author. `account` is `(display_name, nickname)` when the e-mail
/// matches a Bitbucket account; otherwise the API has only `raw`.
pub(crate) struct Person {
    pub name: &'static str,
    pub email: &'static str,
    pub account: Option<(&'static str, &'static str)>,
}

/// The fixed cast: unicode names, a quote in a name, accounts and bots without one.
pub(crate) const PEOPLE: [Person; 12] = [
    Person {
        name: "Jane Doe",
        email: "jane@acme.io",
        account: Some(("Jane D.", "jdoe")),
    },
    Person {
        name: "Zoë Ångström",
        email: "zoe@acme.io",
        account: Some(("Zoë Ångström", "zoe")),
    },
    Person {
        name: "李雷",
        email: "li.lei@acme.io",
        account: Some(("李雷", "lilei")),
    },
    Person {
        name: "José Núñez",
        email: "jose@acme.io",
        account: Some(("José N.", "jnunez")),
    },
    Person {
        name: "Priya Sharma",
        email: "priya@acme.io",
        account: Some(("Priya Sharma", "priya")),
    },
    Person {
        name: "build-bot",
        email: "ci@acme.io",
        account: None,
    },
    Person {
        name: "Olaf \"Ole\" Berg",
        email: "ole@example.org",
        account: None,
    },
    Person {
        name: "Søren Kierkegaard",
        email: "soren@acme.io",
        account: Some(("Søren K.", "soren")),
    },
    Person {
        name: "Ana María O'Neil",
        email: "ana@acme.io",
        account: Some(("Ana María", "anamaria")),
    },
    Person {
        name: "Raj Patel",
        email: "raj.patel@gmail.com",
        account: None,
    },
    Person {
        name: "Kim Min-jun 김민준",
        email: "minjun@acme.io",
        account: Some(("김민준", "minjun")),
    },
    Person {
        name: "root",
        email: "root@localhost",
        account: None,
    },
];

impl Person {
    pub(crate) fn raw(&self) -> String {
        format!("{} <{}>", self.name, self.email)
    }

    /// The Bitbucket account, with ids derived from the person's position so
    /// they are the same in every world.
    pub(crate) fn user(&self, index: usize) -> Option<User> {
        let (display, nick) = self.account?;
        let mut rng = Rng::new(0xACC0_0000 + index as u64);
        let uuid = rng.uuid();
        Some(User {
            display_name: Some(display.to_owned()),
            uuid: Some(uuid),
            account_id: Some(format!("557058:{:016x}", mix(index as u64 + 77))),
            nickname: Some(nick.to_owned()),
        })
    }
}

const SUBJECTS: [&str; 20] = [
    "Fix off-by-one in pagination",
    "Add 支付 (payments) module 🚀",
    "Refactor: extract \"RetryPolicy\", add tests",
    "Update dependencies",
    "Handle commas, quotes \" and 'apostrophes' in CSV export",
    "Corrige l'accès à la base de données — réessai automatique",
    "WIP",
    "Bump version to 1.2.3",
    "Tabs\tin\tthe\tsubject",
    "Ünïcödé everywhere ✨🎉",
    "ドキュメントを更新",
    "Revert \"Add feature flag for new checkout\"",
    "Improve logging of HTTP 429 responses",
    "Resolve merge conflicts, part 2",
    "Remove dead code",
    "Speed up build by 30%",
    "Add Grüße to the greeting list 👋",
    "Fix NPE when user has no e-mail",
    "Tweak CI: cache ~/.cargo",
    "Initial import of the Ελληνικά translations",
];

const BODY_LINES: [&str; 8] = [
    "- bullet point, with a comma",
    "- handles \"quoted\" input",
    "\tindented with a tab",
    "Co-authored-by: Zoë Ångström <zoe@acme.io>",
    "Signed-off-by: Jane Doe <jane@acme.io>",
    "See ISSUE-1234 for details; 详情见工单。",
    "Reviewed-by: José Núñez <jose@acme.io>",
    "Emoji in the body too: 🐛➡️✅",
];

/// The commit message of a node, regenerated from its seed (messages are not
/// stored to keep million-commit worlds small). Ends with a newline, as git's do.
pub(crate) fn message(node: &Node) -> String {
    let mut rng = Rng::new(node.msg_seed);
    if node.nparents > 1 {
        return format!(
            "Merge branch 'feature/{}-{}'\n",
            rng.pick(&["login", "export", "retry", "ui", "cache"]),
            rng.below(900) + 100
        );
    }
    let mut msg = rng.pick(&SUBJECTS).to_string();
    let roll = rng.below(1000);
    if roll < 5 {
        // A few very long messages (> 10 kB), as pasted logs produce.
        msg.push_str("\n\n");
        let mut n = 0;
        while msg.len() < 10_500 {
            n += 1;
            msg.push_str(&format!(
                "Line {n}: stack trace frame at com.acme.payments.Handler.process(Handler.java:{n}) — ünïcode, \"quotes\", commas\n"
            ));
        }
    } else if roll < 500 {
        msg.push_str("\n\n");
        for _ in 0..1 + rng.below(4) {
            let line: &&str = rng.pick(&BODY_LINES);
            msg.push_str(line);
            msg.push('\n');
        }
    } else {
        msg.push('\n');
    }
    msg
}

/// Characters escaped in path segments: everything but unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment (branch names may contain `/`).
pub(crate) fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A Unix time at a given offset.
pub(crate) fn datetime(secs: i64, offset_min: i16) -> DateTime<FixedOffset> {
    let utc = Utc
        .timestamp_opt(secs, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let offset = FixedOffset::east_opt(i32::from(offset_min) * 60).unwrap_or(Utc.fix());
    utc.with_timezone(&offset)
}

/// ISO 8601 as Bitbucket writes it (`2024-05-01T12:00:00+00:00`).
pub(crate) fn iso(dt: &DateTime<FixedOffset>) -> String {
    dt.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("<br>"),
            _ => out.push(c),
        }
    }
    out
}

fn rendered(raw: &str) -> Value {
    json!({"type": "rendered", "raw": raw, "markup": "markdown",
           "html": format!("<p>{}</p>", html_escape(raw))})
}

pub(crate) fn user_json(origin: &str, user: &User) -> Value {
    let uuid = user.uuid.clone().unwrap_or_default();
    let enc_uuid = enc(&uuid);
    json!({
        "type": "user",
        "display_name": user.display_name,
        "uuid": uuid,
        "account_id": user.account_id,
        "nickname": user.nickname,
        "links": {
            "self": {"href": format!("{origin}/2.0/users/{enc_uuid}")},
            "avatar": {"href": format!("{origin}/account/{enc_uuid}/avatar")},
            "html": {"href": format!("{origin}/{enc_uuid}/")},
        }
    })
}

fn actor_json(origin: &str, kind: &str, person: usize) -> Value {
    let p = &PEOPLE[person % PEOPLE.len()];
    let mut v = json!({"type": kind, "raw": p.raw()});
    if let (Some(user), Value::Object(m)) = (p.user(person % PEOPLE.len()), &mut v) {
        m.insert("user".into(), user_json(origin, &user));
    }
    v
}

/// Where payload links point, and the repository a commit belongs to.
pub(crate) struct Ctx<'a> {
    pub origin: &'a str,
    pub ws: &'a str,
    pub repo: &'a Repo,
}

impl Ctx<'_> {
    /// `{origin}/2.0/repositories/{ws}/{slug}`.
    pub(crate) fn api_repo(&self) -> String {
        format!(
            "{}/2.0/repositories/{}/{}",
            self.origin,
            enc(self.ws),
            enc(&self.repo.slug)
        )
    }

    /// `{origin}/{ws}/{slug}`.
    pub(crate) fn html_repo(&self) -> String {
        format!("{}/{}/{}", self.origin, enc(self.ws), enc(&self.repo.slug))
    }

    /// The short repository object embedded in commits.
    fn repo_ref(&self) -> Value {
        json!({
            "type": "repository",
            "name": self.repo.name,
            "full_name": format!("{}/{}", self.ws, self.repo.slug),
            "uuid": self.repo.uuid,
            "links": {
                "self": {"href": self.api_repo()},
                "html": {"href": self.html_repo()},
                "avatar": {"href": format!("{}/avatar/32", self.html_repo())},
            }
        })
    }

    /// A commit as listed, with every field Bitbucket sends by default.
    /// `want` says which top-level keys the response will keep (from a
    /// keep-only `fields=`): building only those is what keeps a
    /// million-commit crawl fast, since rendered HTML and links are most of
    /// the work and of the bytes.
    pub(crate) fn commit(&self, g: &Graph, idx: u32, want: &dyn Fn(&str) -> bool) -> Value {
        let node = &g.nodes[idx as usize];
        let hash = hex(&node.hash);
        let api = self.api_repo();
        let html = self.html_repo();
        let mut m = Map::new();
        m.insert("type".into(), json!("commit"));
        m.insert("hash".into(), json!(hash));
        if want("date") {
            m.insert(
                "date".into(),
                json!(iso(&datetime(node.time, node.offset_min))),
            );
        }
        if want("author") {
            m.insert(
                "author".into(),
                actor_json(self.origin, "author", node.author as usize),
            );
        }
        if node.committer != NO_COMMITTER && want("committer") {
            m.insert(
                "committer".into(),
                actor_json(self.origin, "committer", node.committer as usize),
            );
        }
        if want("message") || want("summary") || want("rendered") {
            let msg = message(node);
            if want("summary") {
                m.insert("summary".into(), rendered(&msg));
            }
            if want("rendered") {
                m.insert("rendered".into(), json!({"message": rendered(&msg)}));
            }
            m.insert("message".into(), json!(msg));
        }
        if want("parents") {
            let parents: Vec<Value> = node
                .parents()
                .iter()
                .map(|&p| {
                    let ph = hex(&g.nodes[p as usize].hash);
                    json!({"type": "commit", "hash": ph, "links": {
                        "self": {"href": format!("{api}/commit/{ph}")},
                        "html": {"href": format!("{html}/commits/{ph}")},
                    }})
                })
                .collect();
            m.insert("parents".into(), Value::Array(parents));
        }
        if want("repository") {
            m.insert("repository".into(), self.repo_ref());
        }
        if want("links") {
            m.insert(
                "links".into(),
                json!({
                    "self": {"href": format!("{api}/commit/{hash}")},
                    "html": {"href": format!("{html}/commits/{hash}")},
                    "diff": {"href": format!("{api}/diff/{hash}")},
                    "patch": {"href": format!("{api}/patch/{hash}")},
                    "comments": {"href": format!("{api}/commit/{hash}/comments")},
                    "approve": {"href": format!("{api}/commit/{hash}/approve")},
                    "statuses": {"href": format!("{api}/commit/{hash}/statuses")},
                }),
            );
        }
        if want("participants") {
            m.insert("participants".into(), json!([]));
        }
        Value::Object(m)
    }

    /// A repository as listed by `GET /repositories/{workspace}`.
    pub(crate) fn repository(&self, ws_uuid: &str) -> Value {
        let r = self.repo;
        let api = self.api_repo();
        let html = self.html_repo();
        let size = 33_280 + r.graph.nodes.len() as u64 * 1_150;
        json!({
            "type": "repository",
            "uuid": r.uuid,
            "slug": r.slug,
            "full_name": format!("{}/{}", self.ws, r.slug),
            "name": r.name,
            "description": "",
            "scm": "git",
            "website": null,
            "language": r.language,
            "is_private": r.is_private,
            "fork_policy": "no_public_forks",
            "has_issues": false,
            "has_wiki": false,
            "size": size,
            "created_on": iso(&datetime(r.created_on, 0)),
            "updated_on": iso(&datetime(r.updated_on, 0)),
            "mainbranch": r.mainbranch.as_ref().map(|b| json!({"name": b, "type": "branch"})),
            "workspace": {
                "type": "workspace", "slug": self.ws, "name": self.ws, "uuid": ws_uuid,
                "links": {"self": {"href": format!("{}/2.0/workspaces/{}", self.origin, enc(self.ws))}},
            },
            "links": {
                "self": {"href": api},
                "html": {"href": html},
                "avatar": {"href": format!("{html}/avatar/32")},
                "commits": {"href": format!("{api}/commits")},
                "branches": {"href": format!("{api}/refs/branches")},
                "tags": {"href": format!("{api}/refs/tags")},
                "clone": [
                    {"name": "https", "href": format!("{html}.git")},
                ],
            }
        })
    }
}
