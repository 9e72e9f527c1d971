//! The frame every page shares, below every area: the header with its navigation (`Nav`),
//! the HTML document around a page's body, field errors of forms (`Errors`,
//! `field_error`), the error page, and the small formatters of times, durations and
//! rates. Rendered by Leptos on the server (no hydration: there is no wasm); everything
//! the user typed or the store holds is escaped by Leptos.

use std::collections::BTreeMap;

use leptos::prelude::*;
use pipeline::accounts::{Role, Session};

use crate::live::human_bytes;
use crate::roles::{Action, allows};

/// What the header needs: who is signed in, their CSRF token, the current organisation.
#[derive(Clone, Debug)]
pub struct Nav {
    pub email: String,
    pub csrf: String,
    pub org: Option<(String, String, Role)>,
}

impl Nav {
    /// The header of a signed-in person outside any organisation.
    pub fn signed_in(s: &Session) -> Nav {
        Nav {
            email: s.user.email.clone(),
            csrf: s.csrf_token.clone(),
            org: None,
        }
    }
}

pub type Errors = BTreeMap<&'static str, String>;

pub(crate) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

pub(crate) fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub(crate) fn duration(created: i64, finished: Option<i64>) -> String {
    let end = finished.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let s = ((end - created).max(0) / 1000) as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub(crate) fn rate(bps: f64) -> String {
    if bps <= 0.0 {
        "–".into()
    } else {
        format!("{}/s", human_bytes(bps as u64))
    }
}

pub(crate) fn document(title: String, nav: Option<Nav>, body: impl IntoView + 'static) -> String {
    let header = nav.map(|n| {
        let org_links = n.org.clone().map(|(id, name, role)| {
            let base = format!("/orgs/{id}");
            view! {
                <a href=format!("{base}/jobs")>{format!("{name}: jobs")}</a>
                <a href=format!("{base}/exports/new")>"New export"</a>
                {allows(role, Action::ViewMembers).then(|| view! { <a href=format!("{base}/members")>"Members"</a> })}
                {allows(role, Action::ViewAudit).then(|| view! { <a href=format!("{base}/audit")>"Audit"</a> })}
                {allows(role, Action::ManageSchedules).then(|| view! { <a href=format!("{base}/schedules")>"Schedules"</a> })}
                {allows(role, Action::ManageRetention).then(|| view! { <a href=format!("{base}/settings")>"Settings"</a> })}
            }
        });
        view! {
            <header class="top">
                <a class="brand" href="/orgs">"portshift"</a>
                <nav>{org_links}</nav>
                <a class="muted" id="whoami" href="/account">{n.email.clone()}</a>
                <form method="post" action="/signout">
                    <input type="hidden" name="csrf" value=n.csrf.clone()/>
                    <button type="submit">"Sign out"</button>
                </form>
                <form method="post" action="/signout-everywhere">
                    <input type="hidden" name="csrf" value=n.csrf.clone()/>
                    <button type="submit">"Sign out everywhere"</button>
                </form>
            </header>
        }
    });
    let page = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <title>{format!("{title} · portshift")}</title>
                <link rel="stylesheet" href="/static/app.css"/>
            </head>
            <body>
                {header}
                <main>{body}</main>
                <script src="/static/live.js"></script>
            </body>
        </html>
    };
    format!("<!DOCTYPE html>{}", page.to_html())
}

pub(crate) fn field_error(errors: &Errors, field: &str) -> impl IntoView + use<> {
    errors
        .get(field)
        .cloned()
        .map(|e| view! { <p class="field-error" id=format!("error-{field}")>{e}</p> })
}

pub fn error_page(nav: Option<Nav>, title: &str, message: &str) -> String {
    let message = message.to_string();
    document(
        title.to_string(),
        nav,
        view! {
            <h1>{title.to_string()}</h1>
            <p class="notice bad" id="error">{message}</p>
            <p><a href="/orgs">"Back to your organisations"</a></p>
        },
    )
}
