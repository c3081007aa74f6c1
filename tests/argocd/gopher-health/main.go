// Command gopher-health runs an Argo CD health script the way Argo CD's application controller
// does: in gopher-lua (Lua 5.1), with only the libraries Argo CD opens for a custom check from
// argocd-cm, the object as the global `obj` (decoded from JSON as the controller decodes an
// unstructured object), a one-second limit, and the returned table read as a health status.
//
//	gopher-health [-open-libs] SCRIPT [OBJECT.json]   prints {"status":…,"message":…}; the
//	                                                  object comes from stdin without a file
//	gopher-health -test HARNESS SCRIPT                runs a Lua test harness (full libraries)
//	                                                  whose loadfile(SCRIPT, mode, env) runs
//	                                                  SCRIPT in the Argo CD sandbox with env.obj
//
// Behaviour mirrored from argo-cd util/lua (lua.go, oslib_safe.go); the code is our own.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The statuses Argo CD accepts from a script; anything else becomes Unknown.
var validStatuses = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

type health struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

func main() {
	openLibs := flag.Bool("open-libs", false,
		"open every standard library, as resource.customizations.useOpenLibs.<group>_<kind>: true does")
	harness := flag.String("test", "", "run this Lua test harness against SCRIPT")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: gopher-health [-open-libs] SCRIPT [OBJECT.json] | gopher-health -test HARNESS SCRIPT")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	fail(err)
	if *harness != "" {
		os.Exit(runHarness(*harness, flag.Arg(0), string(script), *openLibs))
	}
	input := io.Reader(os.Stdin)
	if flag.NArg() > 1 && flag.Arg(1) != "-" {
		file, err := os.Open(flag.Arg(1))
		fail(err)
		defer file.Close()
		input = file
	}
	object, err := decodeObject(input)
	fail(err)
	result, err := evaluate(string(script), object, *openLibs)
	fail(err)
	out, err := json.Marshal(result)
	fail(err)
	fmt.Println(string(out))
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "gopher-health:", err)
		os.Exit(1)
	}
}

// decodeObject reads JSON into the Go values of an unstructured Kubernetes object: integers as
// int64, other numbers as float64.
func decodeObject(input io.Reader) (map[string]any, error) {
	decoder := json.NewDecoder(input)
	decoder.UseNumber()
	var raw any
	if err := decoder.Decode(&raw); err != nil {
		return nil, err
	}
	object, ok := numbers(raw).(map[string]any)
	if !ok {
		return nil, errors.New("the object must be a JSON object")
	}
	return object, nil
}

func numbers(value any) any {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case []any:
		for i := range v {
			v[i] = numbers(v[i])
		}
	case map[string]any:
		for k := range v {
			v[k] = numbers(v[k])
		}
	}
	return value
}

// toLua converts a decoded object as Argo CD's decodeValue does (unknown types become nil).
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case []any:
		table := l.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case map[string]any:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}

// sandbox opens what Argo CD opens for a custom health check: package, base, table, and an
// os library reduced to time and date (registered, as Argo CD does, through require("os")
// and, by Argo CD's own registration, under the table module). open-libs opens everything.
func sandbox(openLibs bool) *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int {
		l.Push(l.SetFuncs(l.NewTable(), safeOs))
		return 1
	})
	return l
}

// os.time and os.date as gopher-lua implements them (Argo CD's copies are the same code).
var safeOs = func() map[string]lua.LGFunction {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	l.Push(l.NewFunction(lua.OpenOs))
	l.Push(lua.LString(lua.OsLibName))
	l.Call(1, 1)
	os := l.Get(-1).(*lua.LTable)
	return map[string]lua.LGFunction{
		"time": os.RawGetString("time").(*lua.LFunction).GFunction,
		"date": os.RawGetString("date").(*lua.LFunction).GFunction,
	}
}()

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.TabLibName, safeOs))
	return 1
}

// evaluate runs the script on the object and reads its result as Argo CD's ExecuteHealthLua.
func evaluate(script string, object map[string]any, openLibs bool) (health, error) {
	l := sandbox(openLibs)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	returned := l.Get(-1)
	switch returned.Type() {
	case lua.LTNil:
		return health{}, nil
	case lua.LTTable:
	default:
		return health{}, fmt.Errorf("expect table output from Lua script, not %s", returned.Type())
	}
	table := returned.(*lua.LTable)
	// An empty table encodes as a JSON array, which Argo CD reads as an empty status.
	if key, _ := table.Next(lua.LNil); key == lua.LNil {
		return health{}, nil
	}
	var result health
	for field, target := range map[string]*string{"status": &result.Status, "message": &result.Message} {
		switch value := table.RawGetString(field).(type) {
		case *lua.LNilType:
		case lua.LString:
			*target = string(value)
		default:
			return health{}, fmt.Errorf("%s is a Lua %s, not a string", field, value.Type())
		}
	}
	if !validStatuses[result.Status] {
		return health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return result, nil
}

// runHarness runs a Lua 5.x test harness with every library, replacing its loadfile so that
// loading SCRIPT gives a function running it in a fresh Argo CD sandbox with env.obj as the
// object (round-tripped through JSON, as an object read from the API server would be).
func runHarness(harness, scriptPath, script string, openLibs bool) int {
	l := lua.NewState()
	defer l.Close()
	arg := l.NewTable()
	arg.RawSetInt(0, lua.LString(harness))
	arg.RawSetInt(1, lua.LString(scriptPath))
	l.SetGlobal("arg", arg)
	l.SetGlobal("loadfile", l.NewFunction(func(l *lua.LState) int {
		env := l.OptTable(3, l.NewTable())
		l.Push(l.NewFunction(func(l *lua.LState) int {
			var buffer bytes.Buffer
			if err := json.NewEncoder(&buffer).Encode(fromLua(env.RawGetString("obj"))); err != nil {
				l.RaiseError("encoding obj: %v", err)
			}
			object, err := decodeObject(&buffer)
			if err != nil {
				l.RaiseError("decoding obj: %v", err)
			}
			result, err := evaluate(script, object, openLibs)
			if err != nil {
				l.RaiseError("%s", err.Error())
			}
			table := l.NewTable()
			table.RawSetString("status", lua.LString(result.Status))
			if result.Message != "" {
				table.RawSetString("message", lua.LString(result.Message))
			}
			l.Push(table)
			return 1
		}))
		return 1
	}))
	if err := l.DoFile(harness); err != nil {
		fmt.Fprintln(os.Stderr, "gopher-health:", err)
		return 1
	}
	return 0
}

// fromLua converts a Lua value built by a test into JSON-ready Go values: a table with keys
// 1..n only is an array, any other table an object.
func fromLua(value lua.LValue) any {
	switch v := value.(type) {
	case lua.LBool:
		return bool(v)
	case lua.LNumber:
		return float64(v)
	case lua.LString:
		return string(v)
	case *lua.LTable:
		if n := v.Len(); n > 0 {
			count := 0
			v.ForEach(func(lua.LValue, lua.LValue) { count++ })
			if count == n {
				array := make([]any, 0, n)
				for i := 1; i <= n; i++ {
					array = append(array, fromLua(v.RawGetInt(i)))
				}
				return array
			}
		}
		object := map[string]any{}
		v.ForEach(func(key, item lua.LValue) { object[key.String()] = fromLua(item) })
		return object
	}
	return nil
}
