package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// The scripts ask the binary itself for candidates (urfave/cli's --generate-bash-completion),
// so they never go stale when commands change.
const bashCompletion = `# bash completion for shoal: source <(shoal completion bash)
_shoal_complete() {
  local cur words
  COMPREPLY=()
  cur="${COMP_WORDS[COMP_CWORD]}"
  words=("${COMP_WORDS[@]:0:COMP_CWORD}")
  local opts
  if [[ "$cur" == -* ]]; then
    opts=$("${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${words[@]}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
  return 0
}
complete -o bashdefault -o default -F _shoal_complete shoal
`

const zshCompletion = `#compdef shoal
# zsh completion for shoal: source <(shoal completion zsh), or save as _shoal in $fpath
_shoal() {
  local -a opts
  local cur=${words[-1]}
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
if [ "$funcstack[1]" = "_shoal" ]; then
  _shoal "$@"
else
  compdef _shoal shoal
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(shoal completion bash)",
		ArgsUsage: "bash|zsh",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				fmt.Print(bashCompletion)
			case "zsh":
				fmt.Print(zshCompletion)
			default:
				return cli.Exit("completion: name a shell: bash or zsh", exitUsage)
			}
			return nil
		},
	}
}

// operatorCommands are the commands that talk to a running daemon, plus completion.
func operatorCommands() []*cli.Command {
	cmds := []*cli.Command{statusCommand(), peersCommand(), cacheCommand(), pullCommand(), exportCommand(), explainCommand(), searchCommand(), versionCommand()}
	for _, c := range cmds {
		withClientFlags(c)
	}
	return append(cmds, completionCommand())
}
