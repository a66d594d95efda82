//! Secrets from AWS Secrets Manager, read once per cold start and kept for the life of the
//! process. A rotated secret reaches new cold starts; the API key is also read again when the
//! API refuses it (see `dealmachine`), so a rotation reaches warm environments too. During a
//! webhook secret rotation, keep both `whsec_` values in the secret, space-separated, until
//! consumers have switched.

use std::collections::HashMap;

use aws_sdk_secretsmanager::error::DisplayErrorContext;

/// Each `*_SECRET_ARN` setting, and the setting whose value it supplies.
pub const SECRET_SETTINGS: [(&str, &str); 2] =
    [("DEALMACHINE_API_KEY_SECRET_ARN", "DEALMACHINE_API_KEY"), ("WEBHOOK_SECRET_ARN", "WEBHOOK_SECRET")];

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{arn_var} and {value_var} are both set: set only one of them")]
    Both { arn_var: &'static str, value_var: &'static str },
    #[error("{arn_var}: could not read secret {arn}: {message}")]
    Fetch { arn_var: &'static str, arn: String, message: String },
    #[error("{arn_var}: secret {arn} has no text value (SecretString); store the value as plain text")]
    NotText { arn_var: &'static str, arn: String },
}

/// Fetches the secrets that `lookup` names by ARN, as `setting -> value`.
pub async fn fetch(
    lookup: &impl Fn(&str) -> Option<String>,
    aws: &aws_config::SdkConfig,
) -> Result<HashMap<&'static str, String>, SecretError> {
    let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let mut values = HashMap::new();
    for (arn_var, value_var) in SECRET_SETTINGS {
        let Some(arn) = set(arn_var) else { continue };
        if set(value_var).is_some() {
            return Err(SecretError::Both { arn_var, value_var });
        }
        values.insert(value_var, SecretSource::new(aws, arn_var, arn).read().await?);
    }
    Ok(values)
}

/// One secret in Secrets Manager, named by the setting that gave its ARN.
#[derive(Clone)]
pub struct SecretSource {
    client: aws_sdk_secretsmanager::Client,
    arn_var: &'static str,
    arn: String,
}

impl SecretSource {
    pub fn new(aws: &aws_config::SdkConfig, arn_var: &'static str, arn: String) -> Self {
        Self { client: aws_sdk_secretsmanager::Client::new(aws), arn_var, arn }
    }

    /// The secret's text value, trimmed.
    pub async fn read(&self) -> Result<String, SecretError> {
        let (arn_var, arn) = (self.arn_var, self.arn.clone());
        let output = self.client.get_secret_value().secret_id(&arn).send().await.map_err(|e| {
            SecretError::Fetch { arn_var, arn: arn.clone(), message: DisplayErrorContext(e).to_string() }
        })?;
        let value = output.secret_string.ok_or(SecretError::NotText { arn_var, arn })?;
        Ok(value.trim().to_string())
    }
}
