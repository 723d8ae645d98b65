//! The qualification harness: every playbook under `playbooks/` (or `QUALIFY_PLAYBOOKS`)
//! expands into named trials. See the README for filters, environment and exit codes.

fn main() -> std::process::ExitCode {
    modelqa::qualify_main()
}
