//! The API's descriptions kept in step with the server: `docs/openapi.yaml` lists exactly the
//! endpoints of `dispatch::ENDPOINTS` (which a unit test holds to the dispatch), every reference in it
//! resolves, every operation names its path parameters and its errors with the shared `Error`
//! schema, the Postman collection only calls operations of the spec (in the seed's order), and the
//! running API serves the spec at `GET /api/openapi.yaml`.

mod common;

use std::collections::BTreeSet;

use common::*;
use pibl::api::dispatch::{ENDPOINTS, OPENAPI_YAML};
use pibl::clock::Clock;
use serde_json::Value;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).expect("read spec");
    serde_norway::from_str(&text).expect("docs/openapi.yaml is YAML")
}

fn collection() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/pibl.postman_collection.json"))
        .expect("read the Postman collection");
    serde_json::from_str(&text).expect("the Postman collection is JSON")
}

/// (METHOD, template) of every operation in the spec.
fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_object().expect("paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// Follows a local `$ref` (`#/components/...`).
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
            deref(spec, spec.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}")))
        }
        None => v,
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn spec_lists_exactly_the_servers_routes() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
    assert_eq!(spec["servers"][0]["url"], "http://localhost:5000");
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"), "the spec's version is the crate's");
    let in_spec = operations(&spec);
    let in_server: BTreeSet<(String, String)> = ENDPOINTS.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let missing: Vec<_> = in_server.difference(&in_spec).collect();
    let extra: Vec<_> = in_spec.difference(&in_server).collect();
    assert!(missing.is_empty(), "endpoints the server has but docs/openapi.yaml lacks: {missing:?}");
    assert!(extra.is_empty(), "operations in docs/openapi.yaml the server does not answer: {extra:?}");
}

#[test]
fn spec_is_self_consistent() {
    let spec = spec();
    let mut refs = Vec::new();
    collect_refs(&spec, &mut refs);
    assert!(refs.len() > 20, "the spec shares its schemas");
    for r in &refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
        assert!(spec.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    let schemes = spec["components"]["securitySchemes"].as_object().expect("security schemes");
    assert_eq!(schemes["jwt"]["type"], "apiKey");
    assert_eq!(schemes["jwt"]["name"], "Authorization");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");

    let mut operation_ids = BTreeSet::new();
    for (method, path) in operations(&spec) {
        let item = &spec["paths"][&path];
        let op = &item[method.to_lowercase()];
        let what = format!("{method} {path}");
        assert!(operation_ids.insert(op["operationId"].as_str().expect("operationId").to_string()), "{what}");

        // Every `{name}` of the template is a declared path parameter, and only those.
        let declared: BTreeSet<String> = item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .map(|p| deref(&spec, p))
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().expect("parameter name").to_string())
            .collect();
        let in_template: BTreeSet<String> =
            path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(String::from).collect();
        assert_eq!(declared, in_template, "{what}: path parameters");

        // Protected unless it is a credential endpoint, the spec or the page (the metrics take a
        // token where the API faces the network, so they list the schemes beside `{}`).
        let public = ["/api/users", "/api/auth", "/api/openapi.yaml", "/dashboard"].contains(&path.as_str());
        let security = op["security"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(security > 0, !public, "{what}: security");

        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{what}: a success answer");
        for (status, response) in responses {
            let response = deref(&spec, response);
            assert!(response["description"].is_string(), "{what} {status}: description");
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/Error", "{what} {status}: the Error schema");
            }
        }
        if !public {
            assert!(responses.contains_key("401"), "{what}: 401");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413", "415"] {
                assert!(responses.contains_key(status), "{what}: a body can be refused with {status}");
            }
        }
        if path.contains("{appid}") {
            assert!(responses.contains_key("400") && responses.contains_key("403"), "{what}: bad or foreign app id");
        }
    }
}

/// The path of a Postman request's URL, with `{{variables}}` in segments as `{…}` wildcards.
fn postman_path(request: &Value) -> String {
    let url = &request["url"];
    let raw = url["raw"].as_str().or(url.as_str()).expect("url.raw");
    let rest = raw.strip_prefix("{{base_url}}").unwrap_or_else(|| panic!("{raw}: starts with {{{{base_url}}}}"));
    rest.split('?').next().unwrap_or(rest).to_string()
}

/// Whether a concrete path (segments may be `{{variable}}`) fits a template.
fn fits(path: &str, template: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (path.split('/').collect(), template.split('/').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(seg, t)| seg == t || (t.starts_with('{') && !seg.is_empty()))
}

#[test]
fn postman_collection_follows_the_spec_and_the_seed() {
    let spec = spec();
    let ops = operations(&spec);
    let col = collection();
    assert_eq!(col["info"]["schema"], "https://schema.getpostman.com/json/collection/v2.1.0/collection.json");
    let variables: Vec<&str> =
        col["variable"].as_array().expect("variables").iter().filter_map(|v| v["key"].as_str()).collect();
    assert!(variables.contains(&"base_url") && variables.contains(&"token"), "{variables:?}");
    let base_url = col["variable"].as_array().into_iter().flatten().find(|v| v["key"] == "base_url");
    assert_eq!(base_url.map(|v| &v["value"]), Some(&Value::from("http://localhost:5000")));

    let items = col["item"].as_array().expect("items");
    let mut calls = Vec::new();
    for item in items {
        let request = &item["request"];
        let method = request["method"].as_str().expect("method").to_string();
        let path = postman_path(request);
        let op = ops.iter().find(|(m, t)| *m == method && fits(&path, t));
        let (_, template) = op.unwrap_or_else(|| panic!("{method} {path} ({}) is not in the spec", item["name"]));
        let op = &spec["paths"][template][method.to_lowercase()];
        let headers: Vec<(String, String)> = request["header"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| (h["key"].as_str().unwrap_or("").to_lowercase(), h["value"].as_str().unwrap_or("").to_string()))
            .collect();
        let has = |k: &str, v: &str| headers.iter().any(|(hk, hv)| hk == k && hv == v);
        if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
            assert!(has("authorization", "JWT {{token}}"), "{method} {path}: Authorization: JWT {{{{token}}}}");
        }
        if op.get("requestBody").is_some() {
            assert!(has("content-type", "application/json"), "{method} {path}: Content-Type");
            let raw = request["body"]["raw"].as_str().expect("a raw body");
            let body: Value = serde_json::from_str(raw).expect("the body is JSON");
            let schema = deref(&spec, &op["requestBody"]);
            let schema = deref(&spec, &schema["content"]["application/json"]["schema"]);
            for field in schema["required"].as_array().expect("required") {
                let field = field.as_str().unwrap_or("");
                assert!(body.get(field).is_some(), "{method} {path}: the body has {field}");
            }
        }
        // Every query parameter it sends is one the spec documents.
        let raw = request["url"]["raw"].as_str().unwrap_or("");
        for pair in raw.split_once('?').map(|(_, q)| q).unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let documented = op["parameters"].as_array().into_iter().flatten().any(|p| {
                let p = deref(&spec, p);
                p["in"] == "query" && p["name"] == key
            });
            assert!(documented, "{method} {path}: query parameter {key} is not in the spec");
        }
        calls.push((method, template.clone()));
    }

    // The seed's flow, in order.
    let expected = [
        ("POST", "/api/users"),
        ("POST", "/api/auth"),
        ("POST", "/api/apps/{appid}"),
        ("POST", "/api/apps/{appid}"),
        ("GET", "/api/apps/{appid}"),
        ("GET", "/api/apps/{appid}/logs"),
        ("DELETE", "/api/cache"),
        ("DELETE", "/api/cache"),
        ("DELETE", "/api/apps/{appid}/endpoints/{endpoint_id}"),
        ("DELETE", "/api/apps/{appid}"),
        ("DELETE", "/api/users"),
    ];
    let calls: Vec<(&str, &str)> = calls.iter().map(|(m, t)| (m.as_str(), t.as_str())).collect();
    assert_eq!(calls, expected);

    // The login's test script keeps the token for the requests after it.
    let login = &items[1];
    let script: String = login["event"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["listen"] == "test")
        .flat_map(|e| e["script"]["exec"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l.as_str().map(String::from))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(script.contains("pm.collectionVariables.set(\"token\""), "{script}");
    assert!(script.contains("access_token"), "{script}");
}

/// The purge's query parameters in the spec are exactly those the router takes: each documented one
/// is accepted, an undocumented one is refused with 400 naming it.
#[test]
fn the_cache_purge_parameters_match_the_router() {
    let spec = spec();
    let documented: BTreeSet<String> = spec["paths"]["/api/cache"]["delete"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| deref(&spec, p))
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    let accepted: BTreeSet<String> = pibl::api::PURGE_PARAMETERS.iter().map(|p| p.to_string()).collect();
    assert_eq!(documented, accepted);

    let db = TempDb::new("openapi-purge");
    let pibl = start_pibl(api_config(&[], &db), Clock::system());
    let admin = admin_login(&pibl);
    for (name, value) in [("url", "/x/page"), ("tag", "t"), ("prefix", "/x/")] {
        let res = api(pibl.api_addr(), "DELETE", &format!("/api/cache?{name}={value}"), Some(&admin), None);
        assert_eq!(res.status, 200, "{name}: {}", res.text());
    }
    let res = api(pibl.api_addr(), "DELETE", "/api/cache?path=/x/", Some(&admin), None);
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains("path"), "{}", res.text());
    pibl.shutdown();
}

#[test]
fn the_api_serves_its_spec() {
    let db = TempDb::new("openapi");
    let pibl = start_pibl(api_config(&[], &db), Clock::system());
    let res = api(pibl.api_addr(), "GET", "/api/openapi.yaml", None, None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/yaml"));
    let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).expect("spec");
    assert_eq!(res.text(), on_disk, "the served spec is docs/openapi.yaml");
    assert_eq!(OPENAPI_YAML, on_disk);
    // Only GET; other methods get 405 with JSON as usual.
    let res = api(pibl.api_addr(), "DELETE", "/api/openapi.yaml", None, None);
    assert_eq!((res.status, res.header("allow")), (405, Some("GET")));
    assert!(res.json()["error"].is_string());
    pibl.shutdown();
}
