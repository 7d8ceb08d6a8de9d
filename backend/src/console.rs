//! The fleet console: one static page (`console/index.html`) with its script (ES modules) and
//! stylesheet, built into the binary and served by `serve`'s HTTP listener at `/` and
//! `/console/...`.
//! Loading the page needs no session; every figure it shows comes from the JSON API. Documented
//! in `docs/CONSOLE.md`.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The Content-Security-Policy of every response: no inline script or style, nothing loaded or
/// contacted outside this server, the page never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

const INDEX: &str = include_str!("../console/index.html");

/// The files under `/console/`: name, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("console.css", CSS, include_str!("../console/console.css")),
    ("console.js", JS, include_str!("../console/console.js")),
    ("dom.js", JS, include_str!("../console/dom.js")),
    ("api.js", JS, include_str!("../console/api.js")),
    ("charts.js", JS, include_str!("../console/charts.js")),
    ("alerts.js", JS, include_str!("../console/alerts.js")),
    ("pages.js", JS, include_str!("../console/pages.js")),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The security headers of every response of the HTTP listener, the API's included.
pub fn security_headers() -> [(HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// Adds [`security_headers`] to a response (for a middleware over the whole app).
pub fn add_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in security_headers() {
        headers.insert(name, value);
    }
    response
}

/// One static file: its type, and a cache policy. The page is revalidated on each load (so a new
/// binary's page is used at once); script and stylesheet too, as their names carry no version.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response();
    add_security_headers(response)
}

fn not_found() -> Response {
    add_security_headers(
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file\n",
        )
            .into_response(),
    )
}

/// The routes `/` and `/console/{file}`, to merge into the HTTP listener's app.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route("/console/{*file}", get(console_file))
}

async fn console_file(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => asset(content_type, body),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to `console/` and not to [`FILES`] would be missing from the binary.
    #[test]
    fn every_file_of_the_console_folder_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "index.html")
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = FILES.iter().map(|(name, _, _)| name.to_string()).collect();
        served.sort();
        assert_eq!(on_disk, served);
        for (name, _, body) in FILES {
            for import in body.split("from \"./").skip(1) {
                let target = import.split('"').next().unwrap();
                assert!(
                    served.iter().any(|s| s == target),
                    "{name} imports {target}, which is not served"
                );
            }
        }
    }

    /// Text from devices must never reach an HTML parser, and nothing may run that the
    /// Content-Security-Policy would refuse anyway.
    #[test]
    fn no_script_parses_html_and_the_page_has_nothing_inline() {
        for (name, _, body) in FILES {
            for parser in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "DOMParser",
                "createContextualFragment",
            ] {
                assert!(!body.contains(parser), "{name} uses {parser}");
            }
        }
        for tag in INDEX.split("<script").skip(1) {
            assert!(tag.starts_with(" type=\"module\" src=\"/console/"), "{tag}");
        }
        assert!(!INDEX.contains("<style"));
        assert!(!INDEX.contains(" style="));
        assert!(!INDEX.contains(" on"), "an inline event handler");
    }
}
