export * from './module.js';
export * from './layers.js';
export * from './resnet.js';
export * from './optim.js';
export * from './safetensors.js';
export * as init from './init.js';
export * from './state-dict.js';
export * from './batchnorm.js';
