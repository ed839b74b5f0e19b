{
  "targets": [
    {
      "target_name": "anoseg_torch",
      "sources": ["native/torch_addon.cc", "native/distributed.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include_dir\")", "<!@(node scripts/torch-paths.cjs include)"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "_GLIBCXX_USE_CXX11_ABI=1"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wno-unused-parameter", "-Wno-deprecated-declarations"],
      "libraries": ["-L<!(node scripts/torch-paths.cjs libdir)", "-Wl,-rpath,<!(node scripts/torch-paths.cjs libdir)", "<!@(node scripts/torch-paths.cjs libs)"]
    }
  ]
}
