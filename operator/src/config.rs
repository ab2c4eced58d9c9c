//! Command line: the `crdgen` and `run` subcommands and every `run` flag
//! (each also read from a `SAMETAG_*` environment variable).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sametag_policy::duration::{DurationError, DurationSyntax, parse_duration_with};

/// Default sidecar image injected when an ETagStore names none.
pub const DEFAULT_SIDECAR_IMAGE: &str = "ghcr.io/sametag/sidecar:0.1.0";

/// sametag operator: runs one shared Redis ETag store per app and injects the
/// sametag sidecar into pods that opt in.
#[derive(Parser, Debug)]
#[command(name = "sametag-operator", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ETagStore CustomResourceDefinition as YAML (what crds/ holds).
    Crdgen,
    /// Run the controller, the mutating admission webhook and the metrics server.
    Run(Box<RunArgs>),
    /// Invalidate paths, globs or surrogate keys in ETag stores from outside
    /// HTTP (after a batch job or a direct database write): through the
    /// kube-apiserver's pod proxy, one ready sidecar of each store applies
    /// the purge to the store every replica shares, and answers once it is
    /// acknowledged. Needs `get` on the store's `<store>-purge` Secret and
    /// `create` on `pods/proxy`.
    Invalidate(InvalidateArgs),
    /// Diagnose an installation: the CRD, the webhook configuration and its
    /// caBundle, the webhook itself (a dry-run pod), every ETagStore's
    /// Ready, opted-in pods without the sidecar, Services that bypass it
    /// with a numeric targetPort, and sidecar image drift. One PASS, WARN
    /// or FAIL line each; exit status 1 on a failure (or a warning with
    /// --strict).
    Check(crate::check::CheckArgs),
}

/// The name to show in help and errors: `kubectl sametag` when run as a
/// kubectl plugin (installed as `kubectl-sametag`), else none (clap's own).
pub fn display_name(argv0: &str) -> Option<&'static str> {
    let file = std::path::Path::new(argv0).file_name()?.to_str()?;
    file.strip_prefix("kubectl-sametag")
        .filter(|rest| rest.is_empty() || *rest == ".exe")
        .map(|_| "kubectl sametag")
}

/// Flags of `sametag-operator invalidate`.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["paths", "keys"])))]
pub struct InvalidateArgs {
    /// ETagStore to purge in (repeatable); default: every store in the
    /// namespace (or in every namespace with --all-namespaces).
    #[arg(long = "store", value_name = "NAME")]
    pub stores: Vec<String>,

    /// Namespace of the stores (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// A canonical path (`/items/7`) or a glob (`/items/**`) to invalidate
    /// for every Host, query and user (repeatable).
    #[arg(long = "path", value_name = "PATH|GLOB")]
    pub paths: Vec<String>,

    /// A surrogate key the app put in `Surrogate-Key` (repeatable).
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,

    /// How long one purge request may take (e.g. `10s`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `sametag-operator run`. Kubernetes access comes from the
/// kubeconfig or the in-cluster service account, as kube-rs finds it.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespace the operator runs in: holds the webhook certificate Secret
    /// and the leader-election Lease.
    #[arg(long, env = "SAMETAG_NAMESPACE", default_value = "sametag-system")]
    pub namespace: String,

    /// Only watch these namespaces (comma-separated or repeated; default:
    /// all): their ETagStores, children and pods, and the webhook only
    /// serves their pods. The operator then needs rights in these
    /// namespaces only (the chart's `watchNamespaces` makes Roles there).
    #[arg(
        long = "watch-namespace",
        visible_alias = "watch-namespaces",
        env = "SAMETAG_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,

    /// Sidecar image for stores whose spec.sidecar.image is unset.
    #[arg(long, env = "SAMETAG_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// Port the injected sidecar listens on (the next free port is used when
    /// the pod already has it).
    #[arg(long, env = "SAMETAG_SIDECAR_PORT", default_value_t = 15080)]
    pub sidecar_port: u16,

    /// Admin port of the injected sidecar (/metrics, /healthz, /readyz).
    #[arg(long, env = "SAMETAG_SIDECAR_ADMIN_PORT", default_value_t = 9901)]
    pub sidecar_admin_port: u16,

    /// Address the HTTPS admission webhook (/mutate) listens on.
    #[arg(long, env = "SAMETAG_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,

    /// When set, the webhook configuration's clientConfig.url is set to this
    /// (e.g. https://127.0.0.1:9443/mutate for a local process) instead of a
    /// Service reference.
    #[arg(long, env = "SAMETAG_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Service that fronts the webhook: its DNS names go into the serving
    /// certificate, and a managed webhook configuration points at it.
    #[arg(
        long,
        env = "SAMETAG_WEBHOOK_SERVICE",
        default_value = "sametag-webhook"
    )]
    pub webhook_service: String,

    /// Port of the webhook Service (used by a managed webhook configuration).
    #[arg(long, env = "SAMETAG_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub webhook_service_port: i32,

    /// Name of the MutatingWebhookConfiguration whose caBundle (and, with
    /// --webhook-url, clientConfig.url) the operator keeps current. It also
    /// owns the certificate Secret and the Lease, so they go with it.
    #[arg(long, env = "SAMETAG_WEBHOOK_CONFIG_NAME", default_value = "sametag")]
    pub webhook_config_name: String,

    /// Create and own the whole MutatingWebhookConfiguration (otherwise the
    /// chart creates it and the operator only patches clientConfig).
    #[arg(long, env = "SAMETAG_MANAGE_WEBHOOK_CONFIG", default_value_t = false)]
    pub manage_webhook_config: bool,

    /// Secret (in --namespace) holding the webhook CA and serving certificate;
    /// created when missing, reused and rotated otherwise.
    #[arg(
        long,
        env = "SAMETAG_CERT_SECRET",
        default_value = "sametag-webhook-tls"
    )]
    pub cert_secret: String,

    /// cert-manager issues the webhook certificate into --cert-secret (a
    /// `Certificate` and its CA injector, as the chart's
    /// `webhook.certManager.enabled` sets up): the operator only reads and
    /// reloads it, and never writes the Secret or `caBundle`.
    #[arg(long, env = "SAMETAG_CERT_MANAGER", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cert_manager: bool,

    /// Validity of a newly issued serving certificate (the CA lives 10x longer).
    #[arg(long, env = "SAMETAG_CERT_VALIDITY", default_value = "90d", value_parser = parse_duration)]
    pub cert_validity: Duration,

    /// Renew the serving certificate when it expires within this long.
    #[arg(long, env = "SAMETAG_CERT_RENEW_BEFORE", default_value = "30d", value_parser = parse_duration)]
    pub cert_renew_before: Duration,

    /// How often to check the certificate Secret for rotation and reload it.
    #[arg(long, env = "SAMETAG_CERT_CHECK_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub cert_check_interval: Duration,

    /// Address of the plain-HTTP /metrics, /healthz and /readyz server.
    #[arg(long, env = "SAMETAG_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease so that only one
    /// replica reconciles (the webhook serves on every replica).
    #[arg(long, env = "SAMETAG_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader-election Lease in --namespace.
    #[arg(long, env = "SAMETAG_LEASE_NAME", default_value = "sametag-operator")]
    pub lease_name: String,

    /// How long a Lease is held without renewal.
    #[arg(long, env = "SAMETAG_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "SAMETAG_POD_NAME")]
    pub identity: Option<String>,

    /// Reconcile every store at least this often (keeps status.injectedPods fresh).
    #[arg(long, env = "SAMETAG_RESYNC", default_value = "5m", value_parser = parse_duration)]
    pub resync: Duration,

    /// Leave UIDs to the platform: the injected sidecar and the Redis pods
    /// get no runAsUser, runAsGroup or fsGroup (runAsNonRoot stays), as
    /// OpenShift's restricted-v2 SCC requires.
    #[arg(long, env = "SAMETAG_OMIT_UIDS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub omit_uids: bool,

    /// Log format.
    #[arg(long, env = "SAMETAG_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// tracing-subscriber filter, e.g. `info,sametag_operator=debug`.
    #[arg(long, env = "SAMETAG_LOG", default_value = "info")]
    pub log: String,
}

/// Parse `90s`, `15m`, `1h30m`, `30d` (units ms, s, m, h, d; a bare number
/// is seconds): the operator flags' syntax of the one shared parser.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    parse_duration_with(s, DurationSyntax::OPERATOR_FLAG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m5").is_err());
    }

    #[test]
    fn every_run_flag_has_help_and_env() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run subcommand");
        for arg in run.get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{} has no env var", arg.get_id()));
            assert!(
                env.to_string_lossy().starts_with("SAMETAG_"),
                "--{}",
                arg.get_id()
            );
        }
    }

    #[test]
    fn kubectl_plugin_name() {
        assert_eq!(
            display_name("/usr/local/bin/kubectl-sametag"),
            Some("kubectl sametag")
        );
        assert_eq!(display_name("kubectl-sametag"), Some("kubectl sametag"));
        assert_eq!(display_name("/usr/bin/sametag-operator"), None);
        assert_eq!(display_name("kubectl-sametagx"), None);
        // As a plugin, kubectl passes the words after `sametag`.
        let cli = Cli::try_parse_from(["kubectl-sametag", "check", "-A", "--strict"]).unwrap();
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        assert!(args.all_namespaces && args.strict && !args.no_dry_run);
        assert_eq!(args.webhook_config_name, "sametag");
        assert_eq!(args.cert_secret, "sametag-webhook-tls");
        assert_eq!(args.operator_namespace, "sametag-system");
        assert!(Cli::try_parse_from(["x", "check", "-A", "-n", "shop"]).is_err());
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["sametag-operator", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.webhook_config_name, "sametag");
        assert_eq!(args.cert_secret, "sametag-webhook-tls");
        assert!(args.leader_elect);
        assert_eq!(args.sidecar_image, DEFAULT_SIDECAR_IMAGE);
        assert!(args.watch_namespaces.is_empty());
        assert!(!args.omit_uids && !args.cert_manager);
    }

    #[test]
    fn watch_namespaces_are_a_list() {
        let cli = Cli::try_parse_from([
            "sametag-operator",
            "run",
            "--watch-namespace=a,b",
            "--watch-namespaces",
            "c",
            "--omit-uids",
            "--cert-manager",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.watch_namespaces, ["a", "b", "c"]);
        assert!(args.omit_uids && args.cert_manager);
    }
}
