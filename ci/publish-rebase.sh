#!/usr/bin/env bash
# Publish the outcome of ci/rebase.sh on GitHub (the nightly workflow's last step), with the gh CLI:
#   ported:     push branch rebase/<port> (forced: it is remade from HEAD every time) and open or update
#               its pull request, the report as body (a draft when the validation failed);
#   up-to-date: nothing to publish; an open failure issue for the same TO is closed;
#   conflict, failed (or up to date but not validated): open or update the issue "make rebase TO=<to> fails", the report as body.
#   ci/publish-rebase.sh        reads $BUILD_DIR/rebase-result.env and $BUILD_DIR/rebase-report.md
# Needs GH_TOKEN (the workflow's GITHUB_TOKEN, with contents, pull-requests and issues write).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
result=$BUILD_DIR/rebase-result.env
report=$BUILD_DIR/rebase-report.md
[ -f "$result" ] || die "$result does not exist: ci/rebase.sh did not run"
STATUS='' VALIDATED='' TO='' BRANCH=''
# shellcheck disable=SC1090
. "$result"
[ -f "$report" ] || printf 'make rebase TO=%s: %s (no report was written)\n' "$TO" "$STATUS" > "$report"
title="make rebase TO=$TO fails"
open_issue() {
  gh issue list --state open --search "in:title \"$title\"" --json number,title \
    --jq "map(select(.title == \"$title\")) | .[0].number // empty"
}
case "$STATUS/$VALIDATED" in
  ported/*)
    git -C "$ROOT" push --force origin "refs/heads/$BRANCH:refs/heads/$BRANCH"
    pr=$(gh pr list --head "$BRANCH" --state open --json number --jq '.[0].number // empty')
    draft=()
    [ "$VALIDATED" = yes ] || draft=(--draft)
    if [ -n "$pr" ]; then
      gh pr edit "$pr" --body-file "$report"
      log "updated pull request #$pr"
    else
      gh pr create --head "$BRANCH" --title "Port the series to vLLM $TO" --body-file "$report" "${draft[@]}"
    fi
    ;;
  up-to-date/yes)
    issue=$(open_issue)
    if [ -n "$issue" ]; then
      gh issue close "$issue" --comment "\`make rebase TO=$TO\` succeeds now: the port is up to date."
    fi
    log "up to date: nothing to publish"
    ;;
  *)
    issue=$(open_issue)
    if [ -n "$issue" ]; then
      gh issue edit "$issue" --body-file "$report"
      log "updated issue #$issue"
    else
      gh issue create --title "$title" --body-file "$report"
    fi
    ;;
esac
