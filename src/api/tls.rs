//! The HTTPS endpoints (admins only): `GET /api/tls` lists the certificates the TLS listener serves
//! and the ACME thread's state; `POST /api/tls/revoke` has the ACME certificate replaced by a new
//! one (a new key) and then revoked at the CA, for a key that may have leaked.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::auth::require_admin;
use super::reply::{ApiError, ApiResult, Reply};
use super::state::ApiState;
use crate::clock::{epoch_ms, rfc3339};
use crate::http::request::Request;
use crate::tls::acme::RevokeRefused;
use crate::tls::pem::LoadedCert;

/// `GET /api/tls`: every certificate served (names, serial, validity, days left) and, with
/// `acme_domains` set, what the ACME thread is doing.
pub fn show(state: &ApiState, req: &Request) -> ApiResult<Reply> {
    require_admin(state, req, "see or revoke certificates")?;
    let now = state.clock.wall();
    let certificates: Vec<Value> = match &state.certificates {
        Some(store) => store.current().certs().iter().map(|c| describe(c, now)).collect(),
        None => Vec::new(),
    };
    let acme = state.acme.as_ref().map(|acme| {
        let report = acme.report();
        json!({
            "directory": report.directory,
            "domains": report.domains,
            "serial": report.serial,
            "not_after": report.not_after.map(timestamp),
            "revoke_requested_by": report.revoke_requested_by,
            "unrevoked": report.unrevoked,
            "last_error": report.last_error,
        })
    });
    Ok(Reply::json(200, json!({ "certificates": certificates, "acme": acme })))
}

/// `POST /api/tls/revoke`: starts a revoke-and-reissue of the ACME certificate and answers 202 with
/// the serial that will be revoked; `GET /api/tls` shows when it is done (or why it failed).
pub fn revoke(state: &ApiState, req: &Request) -> ApiResult<Reply> {
    let admin = require_admin(state, req, "see or revoke certificates")?;
    let Some(acme) = &state.acme else {
        return Err(ApiError::Conflict(
            "ACME is off (acme_domains is empty): certificates from files are revoked with their CA, \
             then replaced on disk and reloaded with SIGHUP"
                .into(),
        ));
    };
    match acme.request_revoke(&admin.email) {
        Ok(serial) => {
            log::warn!("[tls] {} asked to replace and revoke certificate serial {serial}", admin.email);
            Ok(Reply::json(
                202,
                json!({
                    "message": "a new certificate is being ordered; the one served now is revoked once it is replaced \
                                (GET /api/tls shows the progress)",
                    "serial": serial,
                }),
            ))
        }
        Err(RevokeRefused::UnderWay(by)) => {
            Err(ApiError::Conflict(format!("a revoke-and-reissue asked for by {by} is under way; see GET /api/tls")))
        }
        Err(RevokeRefused::NothingIssued) => Err(ApiError::Conflict(
            "no ACME certificate has been issued yet, so there is nothing to revoke; see GET /api/tls".into(),
        )),
        Err(RevokeRefused::Stopped) => Err(ApiError::Request(503, "the ACME thread has stopped".into())),
    }
}

fn describe(cert: &LoadedCert, now: SystemTime) -> Value {
    json!({
        "names": cert.names,
        "serial": cert.serial,
        "not_before": timestamp(cert.not_before),
        "not_after": timestamp(cert.not_after),
        "days_left": cert.days_left(now),
    })
}

fn timestamp(time: SystemTime) -> String {
    rfc3339(epoch_ms(time))
}
