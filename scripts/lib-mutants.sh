# Shared by scripts/mutants and scripts/sql-mutants (sourced, not run): which
# tests guard each area, and the detached copy of HEAD that mutants are
# written into. One place, so both scripts judge a store mutant by the same
# tests.

# mutants_area AREA: sets files (cargo-mutants -f filters), tests (cargo
# test target flags), binary_args (for the test binaries, after `--`) and
# needs_services (1 when the tests need PostgreSQL or Docker). Returns 2 for
# an unknown area.
mutants_area() {
  needs_services=0
  binary_args=()
  case "$1" in
    machine)
      files=(-f 'src/machine/**')
      tests=(--lib --test machine_props --test machine_snapshots --test machine_reports) ;;
    store)
      files=(-f 'src/store/**')
      tests=(--lib --test store_conformance --test store_model)
      # The three 60,000-key streams (16 s of the suite's 25 here) measure
      # volume, not a rule: the other stream and unique-key tests hold the
      # same rules on small inputs. The suite waits on its databases and on
      # short sleeps, so four threads finish it sooner on two cores.
      # Together a mutant's conformance run goes from 25 s to 12 s.
      binary_args=(--skip sixty_thousand --test-threads 4)
      needs_services=1 ;;
    shell)
      files=(-f src/shell.rs)
      tests=(--lib --test worker_e2e --test hardening_e2e --test embed --test docker_e2e)
      needs_services=1 ;;
    executor)
      files=(-f 'src/executor/**')
      tests=(--lib --test worker_e2e --test isolation_e2e --test docker_e2e)
      needs_services=1 ;;
    ui)
      files=(-f 'src/cli/ui/**')
      tests=(--lib --test ui_e2e)
      needs_services=1 ;;
    all)
      files=(-f 'src/machine/**' -f 'src/store/**' -f src/shell.rs -f 'src/executor/**' -f 'src/cli/ui/**')
      tests=()
      needs_services=1 ;;
    *)
      return 2 ;;
  esac
}

# mutants_copy ROOT NAME: starts the services when the area needs them,
# makes a detached copy of HEAD in $copy (removed on exit), and points the
# build at the kept target/mutants-target so later runs rebuild only what a
# mutant touches.
mutants_copy() {
  local root=$1 name=$2
  if [ "$needs_services" = 1 ]; then
    # shellcheck source=scripts/services.sh
    source "$root/scripts/services.sh"
    cd "$root"
  fi
  copy=$(mktemp -d "/tmp/dockhand-$name.XXXXXX")
  # shellcheck disable=SC2064 # the paths are fixed now, on purpose
  trap "git -C '$root' worktree remove --force '$copy' >/dev/null 2>&1 || rm -rf '$copy'" EXIT
  git -C "$root" worktree add --detach "$copy" HEAD >/dev/null
  export CARGO_TARGET_DIR="$root/target/mutants-target"
  export INSTA_UPDATE=no
}
