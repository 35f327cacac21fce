# The analytic world: an exact 2-D Gaussian-mixture teacher and MLP students.
# `world` is the fixed interface: `--cfg-options world.means=...` changes teacher and metrics.
world = dict(
    means=[[3.0, 0.0], [2.1213, 2.1213], [0.0, 3.0], [-2.1213, 2.1213], [-3.0, 0.0],
           [-2.1213, -2.1213], [0.0, -3.0], [2.1213, -2.1213]],
    stds=[0.30, 0.50, 0.40, 0.35, 0.45, 0.30, 0.50, 0.40],
    class_weights=[[0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.05],
                   [0.05, 0.05, 0.07, 0.08, 0.10, 0.15, 0.20, 0.30]],
)
backbone = dict(type='GaussianMixtureBackbone', world='${world}', hidden_dim=128, depth=3,
                init_fit=dict(iters=2000, batch_size=1024, lr=2e-3, seed=0))
