{
  description = "cnn-cifar-10: a from-scratch CNN library on NumPy/CuPy, with tools to train on CIFAR-10/100";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      cudaSystems = [ "x86_64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system);

      # Runtime plus test dependencies, the same set pyproject.toml declares.
      pythonPackages = ps: with ps; [ numpy tqdm matplotlib pytest threadpoolctl pillow tensorboardx onnx onnxruntime ];

      mkDevShell = { pkgs, extraPythonPackages ? (_: [ ]), extraPackages ? [ ], extraShellHook ? "" }:
        let
          python = pkgs.python311.withPackages (ps: pythonPackages ps ++ extraPythonPackages ps);
        in
        pkgs.mkShell {
          packages = [ python pkgs.uv ] ++ extraPackages;
          env = {
            # Let uv use the interpreter from the shell instead of downloading one.
            UV_PYTHON = "${python}/bin/python3";
            UV_PYTHON_DOWNLOADS = "never";
          };
          shellHook = ''
            export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"
          '' + extraShellHook;
        };
    in
    {
      devShells = forAllSystems (system:
        let
          pkgs = import nixpkgs { inherit system; };
          impure = mkDevShell { inherit pkgs; };
        in
        {
          inherit impure;
          default = impure;
        } // nixpkgs.lib.optionalAttrs (builtins.elem system cudaSystems) {
          # CuPy built against nixpkgs' CUDA 12 packages (unfree licences).
          cuda =
            let
              pkgsCuda = import nixpkgs {
                inherit system;
                config = { allowUnfree = true; cudaSupport = true; };
              };
            in
            mkDevShell {
              pkgs = pkgsCuda;
              extraPythonPackages = ps: [ ps.cupy ];
              extraPackages = [ pkgsCuda.cudaPackages.cudatoolkit ];
              extraShellHook = ''
                export CNN_CIFAR_BACKEND=''${CNN_CIFAR_BACKEND:-cupy}
                # The NVIDIA driver's libcuda comes from the host system.
                export LD_LIBRARY_PATH="/run/opengl-driver/lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
              '';
            };
        });

      formatter = forAllSystems (system: nixpkgs.legacyPackages.${system}.nixpkgs-fmt);
    };
}
