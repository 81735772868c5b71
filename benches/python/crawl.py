"""What a user would otherwise write: page every repository's default-branch
commits of one workspace with atlassian-python-api (pinned in
requirements.txt), sequentially, and store them in SQLite.

Usage: crawl.py API_URL WORKSPACE TOKEN DB_PATH
Prints one JSON line: {"commits": N, "repos": R, "seconds": S}.

Adaptation to the simulator (as a user would adapt to Bitbucket today):
`cloud.workspaces.get(ws)` calls GET /2.0/workspaces/{ws}, which the
simulator does not serve (and the cross-workspace endpoints answer 410), so
the workspace-scoped repository listing is used directly.
"""
import json
import sqlite3
import sys
import time

from atlassian.bitbucket import Cloud
from atlassian.bitbucket.cloud.repositories import WorkspaceRepositories


def main():
    api_url, workspace, token, db_path = sys.argv[1:5]
    root = api_url.rstrip("/")
    if root.endswith("/2.0"):
        root = root[: -len("/2.0")]
    started = time.monotonic()
    cloud = Cloud(url=root, token=token, cloud=True)
    repos = WorkspaceRepositories(
        f"{cloud.url}/repositories/{workspace}", token=token, cloud=True
    )
    db = sqlite3.connect(db_path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS commits (repo TEXT, hash TEXT, date TEXT, "
        "author TEXT, message TEXT, parents TEXT, PRIMARY KEY (repo, hash))"
    )
    n = 0
    n_repos = 0
    for repo in repos.each():
        n_repos += 1
        branch = (repo.get_data("mainbranch") or {}).get("name")
        if not branch:
            continue
        slug = repo.get_data("slug")
        rows = []
        for c in repo.commits.each(top=branch):
            rows.append(
                (
                    slug,
                    c.hash,
                    c.get_data("date"),
                    (c.get_data("author") or {}).get("raw"),
                    c.get_data("message"),
                    " ".join(p["hash"] for p in c.get_data("parents") or []),
                )
            )
        db.executemany("INSERT OR REPLACE INTO commits VALUES (?,?,?,?,?,?)", rows)
        db.commit()
        n += len(rows)
    db.close()
    print(json.dumps({"commits": n, "repos": n_repos, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
