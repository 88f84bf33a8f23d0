//! Datasets as the gateway shows them.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Emu;
use crate::backend::{Backend, BackendError, DatasetInfo};

/// A stable, UUID-shaped id of a dataset name (SHA-256 of the name, as a version 8 UUID).
pub(crate) fn dataset_id(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The gateway's JSON of a dataset.
pub(crate) fn dataset_json(info: &DatasetInfo, workspace_id: &str) -> Value {
    let created = info.created.clone().unwrap_or_default();
    json!({
        "id": dataset_id(&info.name),
        "name": info.name,
        "workspaceId": workspace_id,
        "createdOn": created,
        "lastModifiedOn": created,
        "tags": {},
        "columns": info.columns.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
    })
}

/// The dataset with a gateway id, if any.
pub(crate) async fn by_id(emu: &Emu, id: &str) -> Result<Option<DatasetInfo>, BackendError> {
    let all = emu.backend.list_datasets().await?;
    Ok(all
        .into_iter()
        .find(|d| dataset_id(&d.name).eq_ignore_ascii_case(id)))
}

/// Number of pages of `total` items.
pub(crate) fn pages(total: u64, size: u64) -> u64 {
    total.div_ceil(size.max(1))
}
