//! `version` and `info`.

use anyhow::Result;
use bosun_cri::CriClient;

use super::output;
use super::InfoArgs;

/// The runtime's versions, as crictl prints them; bosun's own line is printed before the
/// runtime is asked, so it shows on a host whose runtime is down.
pub async fn version(client: &CriClient) -> Result<()> {
    let v = client.query_version().await?;
    output::print_stdout(&format!(
        "Version:  {}\nRuntimeName:  {}\nRuntimeVersion:  {}\nRuntimeApiVersion:  {}\n",
        v.version, v.runtime_name, v.runtime_version, v.runtime_api_version
    ))
}

pub async fn info(client: &CriClient, args: &InfoArgs) -> Result<()> {
    let response = client.status(true).await?;
    // As crictl shows it: the runtime's conditions under "status", then its info map.
    let mut value = match output::info_map(&response.info) {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    if let Some(status) = &response.status {
        value.insert("status".to_owned(), output::proto_json(status)?);
    }
    output::print_value(&serde_json::Value::Object(value), args.output)
}
