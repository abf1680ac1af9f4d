//! `imgbuild upload` and `imgbuild cloud …`: the clap definitions, and the dispatch that calls
//! the `imgbuild-cloud` library and prints what it returns.
//!
//! Results go to stdout (one line each, or the plan); progress bars go to stderr. Each `run`
//! builds its own tokio runtime ([`imgbuild_cloud::block_on`]), so the caller stays synchronous.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use imgbuild_cloud::claim::{self, ClaimOutcome};
use imgbuild_cloud::devices::{self, SyncRequest};
use imgbuild_cloud::error::{CloudError, Context, Result};
use imgbuild_cloud::location::{parse_presign_duration, S3Location};
use imgbuild_cloud::upload::{self, UploadOptions, DEFAULT_JOBS};
use imgbuild_cloud::{block_on, buildconfig, deploy, fleet, provisioning, Aws};

/// `imgbuild upload FILE… --to s3://BUCKET/PREFIX/`.
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    /// Files to upload (a manifest.json next to them is uploaded too).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Destination folder, `s3://BUCKET/PREFIX/`.
    #[arg(long, value_parser = parse_location)]
    pub to: S3Location,
    /// Print a presigned download URL valid this long (e.g. 24h, 7d at most).
    #[arg(long, value_parser = parse_duration)]
    pub presign: Option<Duration>,
    /// Parts uploaded in parallel.
    #[arg(long, default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(usize))]
    pub jobs: usize,
}

impl UploadArgs {
    /// Uploads and prints `s3://BUCKET/KEY sha256=… (N parts, M resumed)` and URLs; `progress`
    /// receives the hashing and upload progress.
    pub fn run(self, progress: imgbuild_progress::Reporter) -> Result<()> {
        for line in self.upload(progress)? {
            println!("{line}");
        }
        Ok(())
    }

    /// Uploads and returns the report lines `run` prints.
    pub fn upload(self, progress: imgbuild_progress::Reporter) -> Result<Vec<String>> {
        let options = UploadOptions {
            jobs: self.jobs.max(1),
            presign: self.presign,
            progress,
            ..UploadOptions::default()
        };
        let reports = block_on(async {
            let aws = Aws::from_env().await?;
            upload::upload_files(&aws, &self.files, &self.to, &options).await
        })?;
        let mut lines = Vec::new();
        for r in reports {
            lines.push(format!(
                "s3://{}/{} sha256={} ({} parts, {} resumed)",
                r.bucket, r.key, r.sha256, r.parts_total, r.parts_reused
            ));
            lines.extend(r.presigned_url);
        }
        Ok(lines)
    }
}

/// Checks that the credentials work and the bucket of `to` exists and is readable, so that
/// `imgbuild build --upload` fails before a long build rather than after it.
pub fn check_destination(to: &S3Location) -> Result<()> {
    block_on(async {
        let aws = Aws::from_env().await?;
        imgbuild_cloud::objects::ensure_bucket(&aws, &to.bucket).await
    })
}

/// `imgbuild cloud …`: the AWS side of a fleet.
#[derive(Subcommand, Debug, Clone)]
pub enum CloudCommand {
    /// The fleet-provisioning claim certificate kept in S3.
    #[command(subcommand)]
    Claim(ClaimCommand),
    /// Fleet-provisioning parameters (endpoints, role alias, template, thing group).
    #[command(subcommand)]
    Provisioning(ProvisioningCommand),
    /// Devices of the fleet.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Deploy Greengrass components to the thing group.
    Deploy(DeployArgs),
    /// Set up (or remove) everything fleet provisioning by claim needs, from an empty account.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Print the account and identity the AWS credentials belong to.
    Whoami,
}

/// Where claim objects live.
#[derive(Args, Debug, Clone)]
pub struct ClaimLocationArgs {
    /// Bucket holding the claim material.
    #[arg(long)]
    pub bucket: String,
    /// Key prefix of the claim objects.
    #[arg(long, default_value = claim::DEFAULT_PREFIX)]
    pub prefix: String,
}

/// `imgbuild cloud claim …`.
#[derive(Subcommand, Debug, Clone)]
pub enum ClaimCommand {
    /// Create the claim certificate and store it in the bucket unless it is there already.
    Ensure {
        /// Bucket and prefix.
        #[command(flatten)]
        location: ClaimLocationArgs,
        /// Claim policy attached to the certificate (created if missing).
        #[arg(long, default_value = "imgbuild-claim-policy")]
        policy: String,
        /// Fleet provisioning template the claim may use (scopes a created policy).
        #[arg(long)]
        template: String,
    },
    /// Download the claim certificate and key for a build (the key is written with mode 0600).
    Fetch {
        /// Bucket and prefix.
        #[command(flatten)]
        location: ClaimLocationArgs,
        /// Directory for claim.cert.pem and claim.private.key.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `imgbuild cloud provisioning …`.
#[derive(Subcommand, Debug, Clone)]
pub enum ProvisioningCommand {
    /// Resolve the endpoints and write the parameters JSON locally and to the bucket.
    Publish {
        /// Bucket for provisioning.json and allowlist.txt.
        #[arg(long)]
        bucket: String,
        /// Key prefix of the provisioning objects.
        #[arg(long, default_value = provisioning::DEFAULT_PREFIX)]
        prefix: String,
        /// Role alias of the Greengrass token exchange role.
        #[arg(long)]
        role_alias: String,
        /// Fleet provisioning template name.
        #[arg(long)]
        template: String,
        /// Thing group of the fleet.
        #[arg(long)]
        thing_group: String,
        /// Allowlist to validate and upload.
        #[arg(long)]
        allowlist: Option<PathBuf>,
        /// Local parameters file.
        #[arg(long, default_value = "provisioning.json")]
        out: PathBuf,
    },
    /// Download published parameters.
    Fetch {
        /// Bucket holding provisioning.json.
        #[arg(long)]
        bucket: String,
        /// Key prefix of the provisioning objects.
        #[arg(long, default_value = provisioning::DEFAULT_PREFIX)]
        prefix: String,
        /// Local parameters file.
        #[arg(long, default_value = "provisioning.json")]
        out: PathBuf,
    },
    /// Write a build configuration: the project's config with its [greengrass] section
    /// completed (or added) from provisioning.json and the claim files — never a second section.
    Config {
        /// The project's configuration.
        #[arg(long, default_value = "imgbuild.toml")]
        config: PathBuf,
        /// Provisioning parameters (from `provisioning fetch`).
        #[arg(long, default_value = "provisioning.json")]
        params: PathBuf,
        /// Directory of claim.cert.pem and claim.private.key (from `claim fetch`), as the build
        /// should see it: relative paths resolve against the output file's directory.
        #[arg(long)]
        claim_dir: PathBuf,
        /// The merged configuration (a new file).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `imgbuild cloud devices …`.
#[derive(Subcommand, Debug, Clone)]
pub enum DevicesCommand {
    /// Remove the things of the group that are not on the allowlist; fix up listed ones.
    ///
    /// Prints the plan first. Removals need `--yes` (or a "y" at the prompt on a terminal) and
    /// at most `--max-removals` of them; otherwise nothing is changed and the exit status is 1.
    Sync {
        /// Allowlist: one serial a line, `#` comments (an allowlist without serials is refused).
        #[arg(long)]
        allowlist: PathBuf,
        /// Thing group of the fleet (a static group; nothing outside it is removed).
        #[arg(long)]
        thing_group: String,
        /// Thing name = PREFIX + serial.
        #[arg(long, default_value = "")]
        thing_prefix: String,
        /// Policy each listed device's certificate must have attached.
        #[arg(long)]
        device_policy: Option<String>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse (change nothing) when the plan removes more things than this.
        #[arg(long, default_value_t = devices::DEFAULT_MAX_REMOVALS)]
        max_removals: usize,
        /// Carry out removals without asking.
        #[arg(long)]
        yes: bool,
    },
    /// List the things of the group: serial, certificate status, Greengrass core device status
    /// and its last status update.
    Ls {
        /// Thing group of the fleet.
        #[arg(long)]
        thing_group: String,
        /// Thing name = PREFIX + serial.
        #[arg(long, default_value = "")]
        thing_prefix: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `imgbuild cloud fleet …`.
#[derive(Subcommand, Debug, Clone)]
pub enum FleetCommand {
    /// Create what fleet provisioning needs, or verify it: token exchange role and alias, device
    /// policy, provisioning role and template, claim certificate and policy, thing group, private
    /// bucket (and with --allowlist-hook a pre-provisioning hook). Prints the plan first; a
    /// resource that exists but differs is reported as drift (exit status 1), never rewritten.
    Init {
        /// Fleet name (1-24 characters of A-Z a-z 0-9 -): prefix of every resource name.
        #[arg(long)]
        name: String,
        /// The fleet's private bucket (default NAME-fleet-ACCOUNT-REGION, lower case).
        #[arg(long)]
        bucket: Option<String>,
        /// Thing name = PREFIX + serial number (default NAME-).
        #[arg(long)]
        thing_prefix: Option<String>,
        /// Deploy the allowlist pre-provisioning hook (a Lambda function) and set it on the
        /// template: only serials on s3://BUCKET/provisioning/allowlist.txt can register.
        #[arg(long)]
        allowlist_hook: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Provisioning parameters for `provisioning config` (written after a clean run).
        #[arg(long, default_value = "provisioning.json")]
        params: PathBuf,
        /// Also write a `[greengrass]` section for the build config to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Claim directory the `--out` section names (where `claim fetch --out` puts the files).
        #[arg(long, default_value = "secrets")]
        claim_dir: PathBuf,
    },
    /// Remove what `fleet init` made. Refuses while things remain in the thing group.
    Destroy {
        /// Fleet name.
        #[arg(long)]
        name: String,
        /// The fleet's bucket, if `init` was given one.
        #[arg(long)]
        bucket: Option<String>,
        /// Go ahead although things remain in the group (their certificates lose the device policy).
        #[arg(long)]
        force: bool,
    },
}

/// `imgbuild cloud deploy`.
#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// Thing group to deploy to.
    #[arg(long)]
    pub thing_group: String,
    /// Components map (as for `aws greengrassv2 create-deployment --components`); a
    /// componentVersion of "latest" is resolved and printed before deploying.
    #[arg(long)]
    pub components: PathBuf,
    /// Deployment name (default `imgbuild-GROUP`).
    #[arg(long)]
    pub name: Option<String>,
    /// Follow the deployment and print each device's status until all core devices of the
    /// group succeeded, failed or timed out. Exit status: 0 all succeeded, 3 a device failed,
    /// 4 a device timed out (or had not finished by --timeout), 1 any other error, 2 usage.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 30m, 2h).
    #[arg(long, value_parser = parse_wait_duration, requires = "wait")]
    pub timeout: Option<Duration>,
    /// Pause between status polls of --wait (e.g. 10s).
    #[arg(long, value_parser = parse_wait_duration, requires = "wait")]
    pub poll_interval: Option<Duration>,
}

impl CloudCommand {
    /// Runs the command against the account of the standard AWS credential chain.
    ///
    /// Some errors call for an exit status other than 1 (`deploy --wait`: 3 a device failed,
    /// 4 one timed out); the caller prints the error and exits with [`CloudError::exit_code`].
    pub fn run(self) -> Result<()> {
        block_on(async {
            let aws = Aws::from_env().await?;
            self.run_with(&aws).await
        })
    }

    /// Runs the command with prepared clients.
    pub async fn run_with(self, aws: &Aws) -> Result<()> {
        match self {
            CloudCommand::Claim(cmd) => run_claim(aws, cmd).await,
            CloudCommand::Provisioning(cmd) => run_provisioning(aws, cmd).await,
            CloudCommand::Devices(cmd) => run_devices(aws, cmd).await,
            CloudCommand::Deploy(args) => run_deploy(aws, args).await,
            CloudCommand::Fleet(cmd) => run_fleet(aws, cmd).await,
            CloudCommand::Whoami => {
                let who = aws.caller_identity().await?;
                println!(
                    "account {} region {} identity {}",
                    who.account,
                    aws.region(),
                    who.arn
                );
                Ok(())
            }
        }
    }
}

async fn run_claim(aws: &Aws, cmd: ClaimCommand) -> Result<()> {
    match cmd {
        ClaimCommand::Ensure {
            location,
            policy,
            template,
        } => {
            let loc = S3Location::new(&location.bucket, &location.prefix)?;
            let outcome = claim::ensure_claim(aws, &loc, &policy, &template).await?;
            let what = match &outcome {
                ClaimOutcome::Existing { .. } => "claim certificate already in place",
                ClaimOutcome::PolicyReattached { .. } => {
                    "claim certificate in place; policy attached again"
                }
                ClaimOutcome::Created {
                    policy_created: true,
                    ..
                } => "claim certificate and policy created",
                ClaimOutcome::Created { .. } => "claim certificate created",
            };
            println!("{what}: {} ({loc})", outcome.certificate_arn());
            Ok(())
        }
        ClaimCommand::Fetch { location, out } => {
            let loc = S3Location::new(&location.bucket, &location.prefix)?;
            let files = claim::fetch_claim(aws, &loc, &out).await?;
            println!(
                "wrote {} and {} (0600) for {}",
                files.cert.display(),
                files.key.display(),
                files.certificate_arn
            );
            Ok(())
        }
    }
}

async fn run_provisioning(aws: &Aws, cmd: ProvisioningCommand) -> Result<()> {
    match cmd {
        ProvisioningCommand::Publish {
            bucket,
            prefix,
            role_alias,
            template,
            thing_group,
            allowlist,
            out,
        } => {
            let req = provisioning::PublishRequest {
                location: S3Location::new(&bucket, &prefix)?,
                role_alias: &role_alias,
                template: &template,
                thing_group: &thing_group,
                allowlist: allowlist.as_deref(),
                out: &out,
            };
            provisioning::publish(aws, &req).await?;
            println!(
                "wrote {} and {}{}",
                out.display(),
                req.location,
                provisioning::PARAMS_NAME
            );
            Ok(())
        }
        ProvisioningCommand::Fetch {
            bucket,
            prefix,
            out,
        } => {
            let loc = S3Location::new(&bucket, &prefix)?;
            provisioning::fetch(aws, &loc, &out).await?;
            println!("wrote {}", out.display());
            Ok(())
        }
        ProvisioningCommand::Config {
            config,
            params,
            claim_dir,
            out,
        } => {
            for r in buildconfig::write_merged(&config, &params, &claim_dir, &out)? {
                println!(
                    "[greengrass] {}: {} replaced by the published {:?}",
                    r.key, r.old, r.new
                );
            }
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

// --- devices sync / ls ------------------------------------------------------------------

async fn run_devices(aws: &Aws, cmd: DevicesCommand) -> Result<()> {
    match cmd {
        DevicesCommand::Sync {
            allowlist,
            thing_group,
            thing_prefix,
            device_policy,
            dry_run,
            max_removals,
            yes,
        } => {
            let args = devices::SyncArgs {
                allowlist: &allowlist,
                request: SyncRequest {
                    thing_group: &thing_group,
                    thing_prefix: &thing_prefix,
                    device_policy: device_policy.as_deref(),
                },
                dry_run,
                guards: devices::Guards { max_removals, yes },
            };
            let outcome = devices::sync(
                aws,
                &args,
                |plan| println!("{plan}"),
                |plan| confirm_removals(plan.remove.len(), &thing_group),
            )
            .await?;
            let devices::SyncOutcome::Applied(done) = outcome else {
                return Ok(());
            };
            println!(
                "done: added to group {}, policies attached {}, things deleted {}, certificates deleted {}, \
                 core devices deleted {}",
                done.added_to_group,
                done.policies_attached,
                done.things_deleted,
                done.certificates_deleted,
                done.core_devices_deleted
            );
            Ok(())
        }
        DevicesCommand::Ls {
            thing_group,
            thing_prefix,
            json,
        } => {
            let rows = devices::list_devices(aws, &thing_group, &thing_prefix).await?;
            if json {
                let text = serde_json::to_string_pretty(&rows)
                    .context(|| "writing the device list as JSON")?;
                println!("{text}");
            } else {
                println!("{}", devices::devices_table(&rows));
            }
            Ok(())
        }
    }
}

/// Asks on the terminal whether to remove `n` things; anything but y/yes refuses. Without a
/// terminal on stdin there is nobody to ask: the error says to pass `--yes`.
fn confirm_removals(n: usize, group: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let refused = |why: &str| {
        CloudError::input(format!(
            "{why}: the plan removes {n} things from thing group {group} (revokes and deletes their \
             certificates); nothing was changed; rerun with --yes to carry it out, or --dry-run to \
             only print the plan"
        ))
    };
    if !std::io::stdin().is_terminal() {
        return Err(refused(
            "removals need --yes (stdin is not a terminal, so nobody can confirm)",
        ));
    }
    eprint!("remove {n} things from thing group {group}, revoking and deleting their certificates? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context(|| "reading the answer")?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(refused("not confirmed")),
    }
}

// --- fleet init / destroy ----------------------------------------------------------------

async fn run_fleet(aws: &Aws, cmd: FleetCommand) -> Result<()> {
    match cmd {
        FleetCommand::Init {
            name,
            bucket,
            thing_prefix,
            allowlist_hook,
            dry_run,
            params,
            out,
            claim_dir,
        } => {
            let spec = fleet::resolve_spec(
                aws,
                &name,
                bucket.as_deref(),
                thing_prefix.as_deref(),
                allowlist_hook,
            )
            .await?;
            let plan = fleet::plan(aws, &spec).await?;
            println!("{plan}");
            if dry_run {
                println!("dry run: nothing was changed");
                return Ok(());
            }
            let created = fleet::apply(aws, &plan, |line| println!("{line}")).await?;
            if let Some(err) = plan.drift_error() {
                return Err(err);
            }
            let json = provisioning::params_json(&plan.params)?;
            write_new_file(&params, &json)?;
            println!("wrote {}", params.display());
            if let Some(out) = &out {
                let path = |file: &str| claim_dir.join(file).display().to_string();
                let (section, _) = buildconfig::merge(
                    "",
                    &out.display().to_string(),
                    &plan.params,
                    &path(claim::CERT_NAME),
                    &path(claim::KEY_NAME),
                )?;
                write_new_file(out, &section)?;
                println!("wrote {} ([greengrass] section)", out.display());
            }
            println!(
                "fleet {} ready ({created} created); devices are things {}SERIAL in group {}; \
                 claim material: imgbuild cloud claim fetch --bucket {} --out {}",
                spec.name,
                spec.thing_prefix,
                spec.thing_group(),
                spec.bucket,
                claim_dir.display()
            );
            if spec.hook {
                println!(
                    "allowlist hook: only serials in s3://{}/{} can register (upload it with \
                     imgbuild cloud provisioning publish --allowlist FILE)",
                    spec.bucket,
                    fleet::docs::allowlist_key()
                );
            }
            Ok(())
        }
        FleetCommand::Destroy {
            name,
            bucket,
            force,
        } => {
            let spec = fleet::resolve_spec(aws, &name, bucket.as_deref(), None, false).await?;
            let done = fleet::destroy(aws, &spec, force, |r| {
                println!("  {}: {}", r.label, r.outcome)
            })
            .await?;
            let deleted = done
                .iter()
                .filter(|r| r.outcome.starts_with("deleted"))
                .count();
            println!("fleet {}: {deleted} resource(s) deleted", spec.name);
            Ok(())
        }
    }
}

/// Writes `text` to `path` through a temporary file beside it and a rename, so a failure never
/// leaves half a file.
fn write_new_file(path: &std::path::Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_owned());
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.context(|| format!("{}: cannot write", path.display()))
}

// --- deploy [--wait] -----------------------------------------------------------------------

async fn run_deploy(aws: &Aws, args: DeployArgs) -> Result<()> {
    let req = deploy::DeployRequest {
        thing_group: &args.thing_group,
        components: &args.components,
        name: args.name.as_deref(),
        wait: args.wait.then(|| deploy::WaitOptions {
            timeout: args.timeout.unwrap_or(deploy::DEFAULT_WAIT_TIMEOUT),
            poll_interval: args.poll_interval.unwrap_or(deploy::DEFAULT_POLL_INTERVAL),
        }),
    };
    let report = deploy::run(aws, &req, |event| match event {
        deploy::DeployEvent::Resolved(r) => {
            println!("{} latest -> {} ({})", r.component, r.version, r.arn)
        }
        deploy::DeployEvent::Created(d) => {
            println!("deployment {} to {}", d.deployment_id, d.target_arn)
        }
        deploy::DeployEvent::Device(line) => println!("  {line}"),
    })
    .await?;
    let Some(report) = report else {
        return Ok(());
    };
    println!("{}", report.summary());
    report.into_result().map(|_| ())
}

fn parse_wait_duration(s: &str) -> Result<Duration, String> {
    deploy::parse_wait_duration(s).map_err(|e| e.to_string())
}

fn parse_location(s: &str) -> Result<S3Location, String> {
    s.parse().map_err(|e: CloudError| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_presign_duration(s).map_err(|e| e.to_string())
}
